"""``AnswerSheetClient``: the answer-sheet-ml Space (register number and subject code read from
a scanned answer sheet).

Written against the contract of the issue that specifies the Space, until the Space lands:
``POST /extract`` (multipart ``file``, optional ``exam_type``, ``pages=first|all``) and Gradio
``predict`` (file) answer the same JSON (:class:`~spaces_client.models.AnswerSheet`).
"""

from __future__ import annotations

from typing import Any, Literal

from gradio_client import handle_file

from spaces_client._base import FileInput, FilePart, SpaceClient, on_disk, read_file, validator
from spaces_client.engine import GradioCall, Request, RestCall
from spaces_client.models import AnswerSheet

_parse = validator(AnswerSheet)
Pages = Literal["first", "all"]

# The smallest valid PNG (1x1 white): what `spaces-client check` sends.
PROBE_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408"
    "d763f8ffff3f0005fe02fea7d6a5700000000049454e44ae426082"
)


class AnswerSheetClient(SpaceClient):
    """Typed client of the answer-sheet-ml Space."""

    kind = "answer_sheet"

    def _request(
        self, part: FilePart, path: str | None, exam_type: str | None, pages: Pages
    ) -> Request[AnswerSheet]:
        fields: dict[str, Any] = {"pages": pages}
        if exam_type is not None:
            fields["exam_type"] = exam_type
        named = {k: v for k, v in fields.items() if not (k == "pages" and v == "first")}
        return Request(
            name="extract",
            gradio=GradioCall("/predict", (handle_file(path),), named) if path else None,
            parse_gradio=_parse,
            rest=RestCall("POST", "/extract", files=[("file", part.multipart())], data=fields),
            parse_rest=_parse,
            local_args=(part.data,),
            local_kwargs={"exam_type": exam_type, "pages": pages},
            parse_local=_parse,
        )

    def probe(self) -> Request[AnswerSheet]:
        """A blank one-pixel page (the Space may refuse it: that is an answer too)."""
        part = read_file(PROBE_PNG, "probe.png")
        return self._request(part, None, None, "first")

    def extract(
        self,
        file: FileInput,
        exam_type: str | None = None,
        *,
        pages: Pages = "first",
        timeout: float | None = None,
    ) -> AnswerSheet:
        """Read the register number and subject code of a scanned answer sheet.

        Args:
            file: The scan: a path, its bytes or a binary file (PDF, PNG, JPEG).
            exam_type: The exam type, when the Space should check codes against it.
            pages: ``first`` page, or ``all`` pages of a PDF.
            timeout: This call's deadline in seconds.

        Returns:
            The fields with their confidence, boxes and validity; ``needs_review`` when a
            person should look.
        """
        part = read_file(file, "sheet.pdf")
        with on_disk([part]) as paths:
            return self._run(self._request(part, paths[0], exam_type, pages), timeout)

    async def aextract(
        self,
        file: FileInput,
        exam_type: str | None = None,
        *,
        pages: Pages = "first",
        timeout: float | None = None,
    ) -> AnswerSheet:
        """Async :meth:`extract`."""
        part = read_file(file, "sheet.pdf")
        with on_disk([part]) as paths:
            return await self._arun(self._request(part, paths[0], exam_type, pages), timeout)
