from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0008_job_flags_job_requested_model"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="tool_calls",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
