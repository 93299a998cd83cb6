"""The two ways a budget refuses a request (both 402): used up or too large
(BudgetExceeded), or held by requests in flight (BudgetBusy). Their messages
show amounts only to whom the budget concerns; budget_hold raises them."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone
from rest_framework import status

from apps.core.errors import ApiError

from .money import format_usd
from .windows import Budget, Window


def _whose(budget: Budget) -> str:
    return "Your" if budget.scope == "user" else "Your organisation's"


class BudgetExceeded(ApiError):
    """The budget cannot take this request: used up (its settled spend reached the
    limit), or the request may cost more than is left. Amounts are shown only to
    whom they concern: the user their own budget's, a tenant admin key the
    tenant's; a plain user key learns only that the organisation's budget is the
    reason."""

    status_code = status.HTTP_402_PAYMENT_REQUIRED
    code = "budget_exceeded"

    def __init__(
        self,
        *,
        budget: Budget,
        window: Window,
        spent: int,
        reserved: int,
        amount: int,
        used_up: bool = True,
        fits_max_tokens: int | None = None,
        show_amounts: bool = True,
    ) -> None:
        whose, period, resets = _whose(budget), budget.period_word, window.resets
        if used_up:
            amounts = f" of {format_usd(budget.limit_micros)}" if show_amounts else ""
            message = f"{whose} {period} budget{amounts} is used up; it resets at {resets}."
            param = None
        else:
            left = (
                f" ({format_usd(budget.limit_micros - spent)} of {format_usd(budget.limit_micros)} left)"
                if show_amounts
                else ""
            )
            cost = f" up to {format_usd(amount)}," if show_amounts else ""
            if fits_max_tokens:
                fix, param = f" A max_tokens of {fits_max_tokens} or less would fit.", "max_tokens"
            else:
                fix, param = " Its input alone costs more than what is left.", "messages"
            message = (
                f"This request may cost{cost} more than what is left of {whose.lower()} {period} budget{left}.{fix}"
                f" The budget resets at {resets}."
            )
        super().__init__(
            message,
            param=param,
            headers={"Retry-After": str(max(1, int((window.end - timezone.now()).total_seconds())))},
        )
        self.budget = budget
        self.window = window
        self.used_up = used_up
        self.fits_max_tokens = fits_max_tokens


class BudgetBusy(ApiError):
    """The budget has room, but holds of requests in flight take it: try again in a
    few seconds (they settle at their actual cost, usually far below the hold).
    Nothing is switched off."""

    status_code = status.HTTP_402_PAYMENT_REQUIRED
    code = "budget_busy"
    error_type = "rate_limit_error"

    def __init__(self, *, budget: Budget, spent: int, reserved: int, show_amounts: bool) -> None:
        amounts = (
            f" ({format_usd(spent)} spent and {format_usd(reserved)} held of {format_usd(budget.limit_micros)})"
            if show_amounts
            else ""
        )
        retry = settings.BUDGET_BUSY_RETRY_SECONDS
        super().__init__(
            f"{_whose(budget)} {budget.period_word} budget is held by requests in flight{amounts}."
            f" Retry in {retry} seconds.",
            headers={"Retry-After": str(retry)},
        )
        self.budget = budget
