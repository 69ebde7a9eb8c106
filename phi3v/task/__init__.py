"""The task: what the model is asked about an item's photos, the typed fields it answers, reading an
answer back and scoring it. Data (batching), training (evaluation) and inference (predict, the web
demo) all read it from here.

  fields.py   FieldSpec: one field (name, catalogue column, type, format, label)
  spec.py     TaskSpec: the ordered fields, question and answer template; writing and parsing answers
  photos.py   several photos per item: the question's <|image_k|> tags, PhotoSpec caps and bad-photo rule
  scoring.py  metrics by field type against constant baselines fitted on the training split
  numbers.py  reading numbers from text, the signed error of a number
  prompt_file.py  the task as an export's prompt.json records it (and the fixed template of older exports)
"""

from phi3v.task.fields import DEFAULT_FIELDS, FIELD_TYPES, FieldSpec, FieldValue
from phi3v.task.numbers import parse_number, price_error_pct, price_from_answer, read_number
from phi3v.task.photos import PhotoSpec, image_tags, max_photo_tokens, question_for
from phi3v.task.prompt_file import task_from_record, task_record
from phi3v.task.spec import DEFAULT_ANSWER, DEFAULT_QUESTION, TaskSpec

__all__ = [
    "DEFAULT_ANSWER", "DEFAULT_FIELDS", "DEFAULT_QUESTION", "FIELD_TYPES", "FieldSpec", "FieldValue", "PhotoSpec",
    "TaskSpec", "image_tags", "max_photo_tokens", "parse_number", "price_error_pct", "price_from_answer",
    "question_for", "read_number", "task_from_record", "task_record",
]
