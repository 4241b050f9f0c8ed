"""Model-specific text formatting applied to raw samples.

Samples stay raw; the model's convention is applied at the last moment, so one
corpus serves every model and the parity harness formats exactly like the
calibration feed. multilingual-e5 wants ``query: `` / ``passage: ``;
multilingual-e5-large-instruct wants ``Instruct: {task}\\nQuery: {q}`` for
queries and nothing for passages; pplx-embed and MiniLM want no prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .corpus import Sample

DEFAULT_INSTRUCT_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def apply_prompt(sample: Sample, query_prefix: str = "", passage_prefix: str = "") -> str:
    """``query_prefix + text`` for queries, ``passage_prefix + text`` for passages."""
    if sample.kind == "query":
        return query_prefix + sample.text
    return passage_prefix + sample.text


def apply_instruct(sample: Sample, task: str) -> str:
    """The e5-instruct template: queries carry the task, passages nothing."""
    if sample.kind == "query":
        return f"Instruct: {task}\nQuery: {sample.text}"
    return sample.text


@dataclass(frozen=True)
class PromptStyle:
    """How a model wants its inputs: prefixes, or an instruct task.

    With ``instruct_task`` set, queries use the instruct template and passages
    are left bare, so the prefixes must be empty.
    """

    query_prefix: str = ""
    passage_prefix: str = ""
    instruct_task: str | None = None

    def __post_init__(self) -> None:
        if self.instruct_task is not None:
            if not self.instruct_task.strip():
                raise UsageError("the instruct task is empty",
                                 "pass a one-line task description, or no instruct task")
            if self.query_prefix or self.passage_prefix:
                raise UsageError("an instruct prompt takes no query/passage prefix",
                                 "set either instruct_task or the prefixes, not both")

    @classmethod
    def e5(cls) -> PromptStyle:
        return cls("query: ", "passage: ")

    @classmethod
    def e5_instruct(cls, task: str = DEFAULT_INSTRUCT_TASK) -> PromptStyle:
        return cls(instruct_task=task)

    @classmethod
    def plain(cls) -> PromptStyle:
        return cls()

    def apply(self, sample: Sample) -> str:
        return self.format(sample.text, sample.kind)

    def format(self, text: str, kind: str) -> str:
        """One raw text of ``kind`` ("query" or "passage") as the model wants it."""
        if self.instruct_task is not None:
            return f"Instruct: {self.instruct_task}\nQuery: {text}" if kind == "query" else text
        return (self.query_prefix if kind == "query" else self.passage_prefix) + text

    def apply_all(self, samples: list[Sample] | tuple[Sample, ...]) -> list[str]:
        return [self.apply(s) for s in samples]

    def to_dict(self) -> dict:
        return {"query_prefix": self.query_prefix, "passage_prefix": self.passage_prefix,
                "instruct_task": self.instruct_task}
