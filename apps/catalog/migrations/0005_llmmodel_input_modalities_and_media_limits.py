import django.core.validators
from django.db import migrations, models

import apps.catalog.models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0004_llmmodel_tokenizer"),
    ]

    operations = [
        migrations.AddField(
            model_name="llmmodel",
            name="input_modalities",
            field=models.JSONField(
                default=apps.catalog.models.text_only,
                help_text='What requests may send it: a list of "text", "image", "audio", "file" (parts of another'
                " kind are refused with a 400).",
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="max_tokens_per_part",
            field=models.PositiveIntegerField(
                default=1445,
                help_text="The most input tokens one image, audio or file part may cost at this model: what admission"
                " holds for it (a data: image of known size is held at its share by OpenAI's tile formula).",
                validators=[django.core.validators.MinValueValidator(1)],
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="allow_remote_media",
            field=models.BooleanField(
                default=False,
                help_text="Let requests pass http(s) image URLs for the provider to fetch. Only for a provider on the"
                " internet (never vLLM, Ollama or llama.cpp: they would fetch from inside your network).",
            ),
        ),
    ]
