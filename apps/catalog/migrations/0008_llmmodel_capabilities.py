from django.db import migrations, models


def local_capabilities(apps, schema_editor):
    """The demo's llama.cpp model: grammar-constrained JSON, no tools, no developer role."""
    LLMModel = apps.get_model("catalog", "LLMModel")
    LLMModel.objects.filter(provider="llama.cpp").update(
        supports_tools=False, supports_developer_role=False, extra_params=["top_k", "min_p", "repetition_penalty"]
    )


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0007_llmmodel_cached_input_price_per_mtok"),
    ]

    operations = [
        migrations.AddField(
            model_name="llmmodel",
            name="supports_tools",
            field=models.BooleanField(default=True, help_text="Takes tools and tool_choice."),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="supports_json_schema",
            field=models.BooleanField(
                default=True, help_text='Takes response_format {"type": "json_schema"} (structured outputs).'
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="supports_reasoning",
            field=models.BooleanField(default=False, help_text="Takes reasoning_effort (a reasoning model)."),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="supports_developer_role",
            field=models.BooleanField(
                default=True,
                help_text="Knows the developer role; else developer messages are sent as system messages.",
            ),
        ),
        migrations.AddField(
            model_name="llmmodel",
            name="extra_params",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text='Provider extras requests may send (vLLM, llama.cpp): a list of "top_k", "min_p",'
                ' "repetition_penalty", "chat_template_kwargs".',
            ),
        ),
        migrations.RunPython(local_capabilities, migrations.RunPython.noop),
    ]
