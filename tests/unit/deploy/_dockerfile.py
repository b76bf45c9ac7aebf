"""A small Dockerfile reader for static checks: instructions, stages, variable substitution."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Dockerfile", "Instruction", "Stage"]


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined
    line: int  # first physical line, 1-based

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN/HEALTHCHECK CMD, else None."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    base: str  # as written: may contain ${VARIANT}
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV keys set in this stage (``KEY=value`` pairs; later ones win)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', instruction.args):
                values[key] = value.strip('"')
        return values


class Dockerfile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.global_args: list[Instruction] = []
        self.stages: list[Stage] = []
        for instruction in self._logical_lines(path.read_text()):
            if instruction.keyword == "FROM":
                parts = instruction.args.split()
                parts = [p for p in parts if not p.startswith("--")]
                name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
                self.stages.append(Stage(base=parts[0], name=name))
            elif not self.stages:
                self.global_args.append(instruction)
            else:
                self.stages[-1].instructions.append(instruction)

    @staticmethod
    def _logical_lines(text: str) -> list[Instruction]:
        out: list[Instruction] = []
        buffer: list[str] = []
        start = 0
        for number, raw in enumerate(text.splitlines(), 1):
            stripped = raw.strip()
            if stripped.startswith("#") or (not stripped and not buffer):
                continue  # comments (and parser directives) vanish, also inside continuations
            if not buffer:
                start = number
            if stripped.endswith("\\"):
                buffer.append(stripped[:-1].strip())
                continue
            buffer.append(stripped)
            line = " ".join(part for part in buffer if part)
            buffer = []
            keyword, _, args = line.partition(" ")
            out.append(Instruction(keyword.upper(), args.strip(), start))
        return out

    def global_arg_default(self, name: str) -> str | None:
        for instruction in self.global_args:
            if instruction.keyword == "ARG":
                key, _, default = instruction.args.partition("=")
                if key.strip() == name:
                    return default.strip() or None
        return None

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def chain(self, stage: Stage, args: dict[str, str]) -> list[Stage]:
        """``stage`` and the stages it is built FROM, nearest first (the last is FROM an image)."""
        out = [stage]
        while True:
            base = substitute(out[-1].base, args)
            parent = next((s for s in self.stages if s.name == base), None)
            if parent is None:
                return out
            out.append(parent)

    def base_image(self, stage: Stage, args: dict[str, str]) -> str:
        return substitute(self.chain(stage, args)[-1].base, args)


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)
