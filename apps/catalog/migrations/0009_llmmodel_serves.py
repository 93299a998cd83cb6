from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0008_llmmodel_capabilities"),
    ]

    operations = [
        migrations.AddField(
            model_name="llmmodel",
            name="supports_chat",
            field=models.BooleanField(default=True, help_text="Serves /v1/chat/completions and jobs."),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="supports_embeddings",
            field=models.BooleanField(default=True, help_text="Serves /v1/embeddings."),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="embedding_token_input",
            field=models.BooleanField(
                default=False,
                help_text="Its embeddings take token ids as input (OpenAI's do; most servers' do not).",
            ),
        ),
    ]
