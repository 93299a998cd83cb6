import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """A charge never depends on its job row surviving: the ledger keeps the job's
    id without a foreign-key constraint (a job deleted while it ran is still
    charged; deleting a finished job leaves its entries)."""

    dependencies = [
        ("billing", "0002_remove_ledgerentry_one_charge_and_refund_per_attempt_and_more"),
        ("jobs", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="ledgerentry",
            name="job",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="ledger_entries",
                to="jobs.job",
            ),
        ),
    ]
