"""The handlers of the demo (``jobsys demo``), one per job type of ``topology/example.yaml``.

Run them yourself with ``jobsys worker jobsys.cli.demo_app:app --topology topology/example.yaml``.
Some payloads fail on purpose, to show retries with backoff and dead-lettering:

- ``charge_card`` with ``card: "flaky"`` fails twice (a gateway timeout), then succeeds;
- ``charge_card`` with ``card: "declined"`` raises ``CardDeclined``, which the topology lists
  under ``dont_retry``: straight to ``demo.billing.dead``;
- ``audit_event`` with ``crash: true`` fails every time and ends in ``demo.audit.dead``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from jobsys.app import App, JobContext

app = App()

#: Called with (job context, what happened) after each handler run; the demo listens here.
Listener = Callable[[JobContext, str], None]
listeners: list[Listener] = []


def _tell(ctx: JobContext, what: str) -> None:
    for listener in list(listeners):
        listener(ctx, what)


class CardDeclined(Exception):
    """The card was refused: retrying cannot help."""


class EmailPayload(BaseModel):
    to: str = Field(min_length=3)
    subject: str = "hello"


class ChargePayload(BaseModel):
    card: str
    amount_cents: int = Field(gt=0)


@app.handler("send_email")
async def send_email(payload: EmailPayload, ctx: JobContext) -> None:
    await asyncio.sleep(0.05)  # talking to a mail server
    _tell(ctx, f"sent to {payload.to}")


@app.handler("send_newsletter")
async def send_newsletter(payload: dict[str, object], ctx: JobContext) -> None:
    await asyncio.sleep(0.02)
    _tell(ctx, "newsletter sent")


@app.handler("charge_card")
async def charge_card(payload: ChargePayload, ctx: JobContext) -> None:
    if payload.card == "declined":
        _tell(ctx, "card declined")
        raise CardDeclined("the issuing bank declined the card")
    if payload.card == "flaky" and ctx.attempt < 3:
        _tell(ctx, "gateway timed out")
        raise ConnectionError("payment gateway timed out")
    _tell(ctx, f"charged {payload.amount_cents / 100:.2f}")


@app.handler("build_report")
def build_report(payload: dict[str, object], ctx: JobContext) -> None:
    # A sync handler: the worker runs it in a thread so it cannot stall the event loop.
    time.sleep(0.1)
    _tell(ctx, "report built")


@app.handler("render_pdf")
async def render_pdf(payload: dict[str, object], ctx: JobContext) -> None:
    await asyncio.sleep(0.02)
    _tell(ctx, "pdf rendered")


@app.handler("audit_event")
async def audit_event(payload: dict[str, object], ctx: JobContext) -> None:
    if payload.get("crash"):
        _tell(ctx, "audit store unavailable")
        raise RuntimeError("audit store unavailable")
    _tell(ctx, "recorded")
