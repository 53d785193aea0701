"""Bad input: an error that names file, line and field, or a counted skip.

Every loader funnels bad records through one `ErrorPolicy`, so the choice
between failing fast (`on_error='raise'`, the default) and skipping
(`on_error='skip'`) is made once, at the edge, and every skip is counted by
reason in `RecDataset.skipped` (and from there in the prepared `stats.json`).

Reasons used by the loaders (a stable vocabulary; tests and stats rely on it):

  malformed_line        a line that does not parse (JSON, literal, column count)
  missing_field:<name>  a required field is absent or empty
  bad_timestamp         a timestamp that is neither a number nor an ISO date
  bad_rating            a rating that is not a number
  bad_encoding          bytes that are not valid in the file's encoding
  unknown_item          an interaction whose item is not in the catalogue

Some conditions are data policies rather than errors and are counted under
both policies (see `recjax.data.dataset.DatasetBuilder`): `duplicate_item`,
`missing_title`, `item_without_title`.
"""
from __future__ import annotations

import collections
import os
from typing import Optional

ON_ERROR = ("raise", "skip")


class DataError(ValueError):
  """A bad record; `str()` reads like `/data/reviews.json.gz:17: field 'asin': missing`."""

  def __init__(self, path: str | os.PathLike | None, line: Optional[int],
               field: Optional[str], message: str):
    self.path = None if path is None else os.fspath(path)
    self.line = line
    self.field = field
    self.message = message
    super().__init__(self._format())

  def _format(self) -> str:
    where = self.path if self.path else "<input>"
    if self.line is not None:
      where += f":{self.line}"
    if self.field is not None:
      return f"{where}: field '{self.field}': {self.message}"
    return f"{where}: {self.message}"

  def __reduce__(self):  # picklable across processes (Beam, multiprocessing)
    return (DataError, (self.path, self.line, self.field, self.message))


def check_on_error(on_error: str) -> str:
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
  return on_error


class ErrorPolicy:
  """Raises `DataError` (on_error='raise') or counts a skip by reason ('skip')."""

  def __init__(self, on_error: str = "raise",
               counter: collections.Counter | None = None):
    self.on_error = check_on_error(on_error)
    self.skipped: collections.Counter = (
        collections.Counter() if counter is None else counter)

  @property
  def raises(self) -> bool:
    return self.on_error == "raise"

  def error(self, path: str | os.PathLike | None, line: Optional[int],
            field: Optional[str], message: str, reason: str) -> None:
    """Handles one bad record; returns only under 'skip' (caller drops the record)."""
    if self.on_error == "raise":
      raise DataError(path, line, field, message)
    self.skipped[reason] += 1

  def count(self, reason: str, n: int = 1) -> None:
    """Counts a policy drop that is not an error (under both policies)."""
    if n:
      self.skipped[reason] += n


def missing(policy: ErrorPolicy, path, line, field: str) -> None:
  """Shorthand for the most common error: a required field is absent."""
  policy.error(path, line, field, "missing", f"missing_field:{field}")
