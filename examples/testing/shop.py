"""A service: signing up publishes a welcome email; the handler sends it."""

from __future__ import annotations

from pydantic import BaseModel

from jobsys import App, Producer

app = App()
#: What the mail server was asked to send (a stand-in for a real client).
outbox: list[str] = []
#: How many times the mail server will still fail before it answers (for the example).
failures = [0]


class Welcome(BaseModel):
    email: str


@app.handler("send_welcome")
async def send_welcome(job: Welcome) -> None:
    if failures[0] > 0:
        failures[0] -= 1
        raise ConnectionError("mail server unavailable")
    outbox.append(job.email)


async def sign_up(producer: Producer, email: str) -> str:
    """The code under test: it is handed a Producer and does not know it is a test."""
    receipt = await producer.publish("send_welcome", {"email": email})
    return receipt.job_id
