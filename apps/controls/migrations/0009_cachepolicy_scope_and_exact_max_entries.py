import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("controls", "0008_cachepolicy_embedder_backend"),
    ]

    operations = [
        migrations.AddField(
            model_name="cachepolicy",
            name="scope",
            field=models.CharField(
                choices=[
                    ("tenant", "The organisation (its users share answers)"),
                    ("user", "Each user (answers never cross users)"),
                ],
                default="tenant",
                help_text="Who shares cached answers (exact and semantic): the whole organisation, or each user alone.",
                max_length=8,
            ),
        ),
        migrations.AddField(
            model_name="cachepolicy",
            name="exact_max_entries",
            field=models.PositiveIntegerField(
                default=10000,
                help_text="Most exact-match answers kept for the organisation; the oldest go first.",
                validators=[django.core.validators.MinValueValidator(1)],
            ),
        ),
    ]
