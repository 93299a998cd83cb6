import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0005_llmmodel_input_modalities_and_media_limits"),
    ]

    operations = [
        migrations.AddField(
            model_name="llmmodel",
            name="job_timeout_seconds",
            field=models.PositiveIntegerField(
                blank=True,
                help_text="A job's wall-clock deadline on this model, from its start: no call starts after it, and a"
                " running call is stopped at it (charged for what it used, the job failed `timeout`). Reasoning models"
                " think for minutes. Blank: JOB_DEADLINE_SECONDS; at most JOB_TIMEOUT_MAX_SECONDS.",
                null=True,
                validators=[django.core.validators.MinValueValidator(1)],
            ),
        ),
    ]
