from __future__ import annotations

from pydantic import BaseModel


class DocumentIn(BaseModel):
    name: str
    body: str
