from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0006_llmmodel_job_timeout_seconds"),
    ]

    operations = [
        migrations.AddField(
            model_name="llmmodel",
            name="cached_input_price_per_mtok",
            field=models.DecimalField(
                blank=True,
                decimal_places=6,
                help_text="USD per 1M input tokens the provider served from its prompt cache; blank: the input price",
                max_digits=12,
                null=True,
            ),
        ),
    ]
