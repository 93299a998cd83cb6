from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0009_job_tool_calls"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="error_param",
            field=models.CharField(blank=True, max_length=256),
        ),
    ]
