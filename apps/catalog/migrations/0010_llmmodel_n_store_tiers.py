import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0009_llmmodel_serves"),
    ]

    operations = [
        migrations.AddField(
            model_name="llmmodel",
            name="max_n",
            field=models.PositiveSmallIntegerField(
                default=1,
                help_text="The most choices (n) one request may ask of it (vLLM and OpenAI take n; llama.cpp and"
                " Ollama answer one). 1: a request with n above 1 is refused.",
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(128),
                ],
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="allows_store",
            field=models.BooleanField(
                default=False,
                help_text="Forward store: true (the provider keeps the completion, in the account the platform calls"
                " with); else a request with store: true is refused.",
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="service_tiers",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text='The service tiers requests may ask for beyond "auto" and "default", each with its price'
                ' as a multiple of the catalog prices, e.g. {"flex": "0.5", "priority": "2"}. Empty: only auto and'
                " default.",
            ),
        ),
    ]
