from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0011_job_cached_input_tokens_job_reasoning_tokens"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="reasoning",
            field=models.TextField(blank=True),
        ),
    ]
