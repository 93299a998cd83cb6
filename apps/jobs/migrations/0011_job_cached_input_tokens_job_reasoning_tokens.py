from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0010_job_error_param"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="cached_input_tokens",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="reasoning_tokens",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
    ]
