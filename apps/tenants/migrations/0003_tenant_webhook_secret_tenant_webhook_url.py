from django.db import migrations, models

from apps.tenants.models import new_webhook_secret


def distinct_secrets(apps, schema_editor):
    # AddField evaluates the default once: give every existing tenant its own secret.
    # (django-tenants replays shared migrations in each tenant schema; once is enough.)
    if schema_editor.connection.schema_name != "public":
        return
    Tenant = apps.get_model("tenants", "Tenant")
    for tenant in Tenant.objects.all():
        tenant.webhook_secret = new_webhook_secret()
        tenant.save(update_fields=["webhook_secret"])


class Migration(migrations.Migration):
    dependencies = [("tenants", "0002_vector_extension")]

    operations = [
        migrations.AddField(
            model_name="tenant",
            name="webhook_secret",
            field=models.CharField(default=new_webhook_secret, max_length=100),
        ),
        migrations.AddField(
            model_name="tenant",
            name="webhook_url",
            field=models.URLField(blank=True, max_length=2000),
        ),
        migrations.RunPython(distinct_secrets, migrations.RunPython.noop),
    ]
