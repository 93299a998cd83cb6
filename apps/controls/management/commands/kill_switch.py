"""Turn AI off (or back on) for everything, a tenant, a user or a model.

manage.py kill_switch on --level global --reason "provider incident"
manage.py kill_switch on --level tenant --tenant acme --reason "unpaid invoice"
manage.py kill_switch off --level user --tenant acme --user bob@acme.test --reason "sorted out"
manage.py kill_switch on --level model --model gpt-4o --reason "price change"
manage.py kill_switch list
"""

from __future__ import annotations

import getpass
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_tenants.utils import tenant_context

from apps.accounts.models import User
from apps.catalog.models import LLMModel
from apps.controls.models import KillSwitch, SwitchLevel
from apps.controls.switches import switch_set
from apps.tenants.models import Tenant


class Command(BaseCommand):
    help = "Turn AI off or on for all, a tenant, a user or a model (audited), or list switches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["on", "off", "list"], help="on = AI switched OFF for the scope")
        parser.add_argument("--level", choices=SwitchLevel.values)
        parser.add_argument("--tenant", help="schema name (tenant and user levels)")
        parser.add_argument("--user", help="the user's email (user level)")
        parser.add_argument("--model", help="catalog slug (model level)")
        parser.add_argument("--reason", help="why (required for on/off; kept in the audit trail)")
        parser.add_argument("--actor", default=f"command:{getpass.getuser()}", help="who, for the audit trail")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "list":
            for switch in KillSwitch.objects.select_related("tenant").order_by("level", "id"):
                state = "ON " if switch.active else "off"
                auto = f" (automatic, period {switch.period})" if switch.automatic else ""
                self.stdout.write(f"{state} {switch.describe()}{auto}: {switch.reason} [{switch.updated_by}]")
            return
        level = options["level"]
        if not level:
            raise CommandError("--level is required: global, tenant, user or model.")
        if not options["reason"]:
            raise CommandError("--reason is required: it is kept in the audit trail.")
        scope: dict[str, Any] = {}
        if level in (SwitchLevel.TENANT, SwitchLevel.USER):
            if not options["tenant"]:
                raise CommandError(f"--tenant is required for a {level} switch.")
            tenant = Tenant.objects.filter(schema_name=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"No tenant with schema {options['tenant']!r}.")
            scope["tenant"] = tenant
            if level == SwitchLevel.USER:
                if not options["user"]:
                    raise CommandError("--user (email) is required for a user switch.")
                with tenant_context(tenant):
                    user = User.objects.filter(email=options["user"]).first()
                if user is None:
                    raise CommandError(f"No user {options['user']!r} in tenant {tenant.schema_name}.")
                scope.update(user_id=user.pk, user_email=user.email)
        elif level == SwitchLevel.MODEL:
            if not options["model"]:
                raise CommandError("--model is required for a model switch.")
            if not LLMModel.objects.filter(slug=options["model"]).exists():
                raise CommandError(f"No model {options['model']!r} in the catalog.")
            scope["model"] = options["model"]
        active = options["action"] == "on"
        switch = switch_set(
            level=SwitchLevel(level), active=active, actor=options["actor"], reason=options["reason"], **scope
        )
        self.stdout.write(f"AI {'switched OFF' if active else 'back ON'} for {switch.describe()}.")
