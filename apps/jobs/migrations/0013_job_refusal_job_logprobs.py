from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0012_job_reasoning"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="refusal",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="job",
            name="logprobs",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
