"""How far ``apply`` got: what it declared of what it set out to, and what it says when the
broker stops it half-way (pure).

Everything that can be checked is checked before the first declare, so a refusal half-way is
rare: a user who may not configure some names (AMQP cannot ask the broker for permissions
without trying), or somebody changing the broker between the plan and the declares. The report
must then be true: exactly which entities were created (the broker keeps them), and which were
not declared at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobsys.topology.plan import PlanItem


@dataclass
class ApplyProgress:
    """The items ``apply`` declares, in order, and how many of them are done."""

    items: tuple[PlanItem, ...]
    done: int = field(default=0)

    def advance(self) -> None:
        """The next item was declared."""
        self.done += 1

    @property
    def created(self) -> tuple[PlanItem, ...]:
        """Items declared so far that the broker did not hold before."""
        return tuple(i for i in self.items[: self.done] if i.action == "create")

    @property
    def ensured(self) -> tuple[PlanItem, ...]:
        """Bindings declared so far that may or may not have existed (probing cannot tell)."""
        return tuple(i for i in self.items[: self.done] if i.action == "ensure")

    def report(self) -> str:
        """What to tell when the item after the last done one was refused: where apply
        stopped, what it created before, and what it never declared."""
        stopped = self.items[self.done]
        lines = [f"apply stopped at {stopped.kind} {stopped.name}"]
        if not self.done:
            lines[0] += "; nothing was declared before it, so nothing was changed"
        else:
            lines[0] += f", after declaring {self.done} of {len(self.items)}:"
            lines += [f"  created {i.kind} {i.name}" for i in self.created]
            if self.ensured:
                lines.append(f"  ensured {_count(len(self.ensured), 'binding')}")
        lines.append(f"not declared: {_summary(self.items[self.done :])}")
        lines.append(
            "run apply again once the cause is fixed: it declares only what the broker lacks"
        )
        return "\n".join(lines)


def _summary(items: tuple[PlanItem, ...]) -> str:
    named = [f"{i.kind} {i.name}" for i in items if i.kind != "binding"]
    bindings = sum(1 for i in items if i.kind == "binding")
    if bindings:
        named.append(_count(bindings, "binding"))
    return ", ".join(named)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
