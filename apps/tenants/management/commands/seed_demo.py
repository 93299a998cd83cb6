import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django_tenants.utils import tenant_context

from apps.accounts.models import ApiKey, Tier
from apps.accounts.services import api_key_create, user_get_or_create
from apps.catalog.services import catalog_seed_defaults
from apps.controls.models import CachePolicy, EmbedderBackend
from apps.tenants.models import Tenant
from apps.tenants.services import public_tenant_ensure, tenant_create

DEMO_SCHEMA = "demo"
DEMO_EMAIL = "demo@demo.test"


class Command(BaseCommand):
    help = (
        "Idempotently seed the demo: public domain, catalog, a demo tenant (its semantic cache on, with the"
        " local embedder), its user and an API key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--local-base-url", default="http://127.0.0.1:9100/v1", help="base_url for local-small")
        parser.add_argument("--key-file", help="Write a newly created demo key here (mode 600) for the run script")

    def handle(self, *args: Any, **options: Any) -> None:
        public = public_tenant_ensure(domain=settings.PUBLIC_DOMAIN)
        created_models = catalog_seed_defaults(local_base_url=options["local_base_url"])
        if created_models:
            self.stdout.write(f"Catalog: added {', '.join(created_models)}")
        with tenant_context(public):
            self._ensure_admin("operator")

        tenant = Tenant.objects.filter(schema_name=DEMO_SCHEMA).first()
        if tenant is None:
            tenant = tenant_create(schema_name=DEMO_SCHEMA, name="Demo", domain=f"demo.{settings.PUBLIC_DOMAIN}")
            self.stdout.write(
                f"Created tenant {DEMO_SCHEMA} (admin at http://demo.{settings.PUBLIC_DOMAIN}:8000/admin/)"
            )
        _, created = CachePolicy.objects.get_or_create(
            tenant=tenant,
            defaults={"semantic_enabled": True, "embedder_backend": EmbedderBackend.LOCAL},
        )
        if created:
            self.stdout.write("Demo tenant: semantic cache on, with the local CPU embedder")
        with tenant_context(tenant):
            self._ensure_admin("demo tenant")
            user, _ = user_get_or_create(email=DEMO_EMAIL, tier=Tier.PREMIUM)
            if ApiKey.objects.filter(user=user, revoked_at__isnull=True).exists():
                self.stdout.write(
                    f"Demo user {DEMO_EMAIL} already has a key. Make another with:\n"
                    f"  .venv/bin/python manage.py create_api_key --tenant {DEMO_SCHEMA} --email {DEMO_EMAIL}"
                )
                return
            _, raw = api_key_create(user=user, name="demo")
        self.stdout.write(self.style.WARNING(f"Demo API key for {DEMO_EMAIL} (shown once): {raw}"))
        if options["key_file"]:
            fd = os.open(options["key_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(raw)

    def _ensure_admin(self, label: str) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            return
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username="admin", email="admin@localhost", password=password)
        self.stdout.write(self.style.WARNING(f"Created {label} admin login: admin / {password} (shown once)"))
