"""The declared conf of ``openaddr_ci`` (machine-ci.md §2.1 step 10): Airflow ``Param`` objects with a JSON schema.

The UI's trigger form shows each key with its description and a template; Airflow validates a trigger's conf
against the schema when it creates the DAG run (REST API and UI alike: 400 with the schema error), so a malformed
conf never becomes a run. A conf that passes the schema but still cannot be planned (e.g. ``content_b64`` that is
not base64) fails ``plan_job`` at once (:class:`openaddr.machine.planning.TriggerError`).

Light module: imported while DAG files are parsed (standard library and ``airflow.sdk`` only).
"""

from __future__ import annotations

from airflow.sdk import Param

#: Largest CI trigger accepted, as the webhook caps it (equals :data:`openaddr.machine.planning.MAX_CI_FILES`,
#: which a test checks; not imported here so that parsing the DAG never imports ``openaddr``).
MAX_CI_FILES = 200
#: A path under ``sources/`` ending in ``.json``, no empty, ``.`` or ``..`` segment, no backslash; ``<`` and ``>``
#: are refused so that the form's template must be edited before it is accepted.
SOURCE_PATH_PATTERN = r"^sources(/(?!\.\.?/)[^/\\<>]+)*/(?!\.\.?$)[^/\\<>]+\.json$"

_SOURCE = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "pattern": SOURCE_PATH_PATTERN, "maxLength": 1000},
        "blob_sha": {"type": ["string", "null"], "maxLength": 64},
        "content": {"type": "string", "minLength": 1},
        "content_b64": {"type": "string", "minLength": 1},
    },
    "required": ["path"],
    "oneOf": [{"required": ["content"]}, {"required": ["content_b64"]}],
    "additionalProperties": False,
}
_GITHUB = {
    "type": ["object", "null"],
    "properties": {
        key: {"type": ["string", "null"]} for key in ("status_url", "comments_url", "owner", "repository")
    },
    "additionalProperties": False,
}
_TEMPLATE = [
    {
        "path": "sources/<country>/<source>.json",
        "blob_sha": None,
        "content": '{"schema": 2, "layers": {"addresses": [{"name": "…", "data": "…", "conform": {…}}]}}',
    }
]

CI_PARAMS: dict[str, Param] = {
    "sources": Param(
        _TEMPLATE,
        type="array",
        minItems=1,
        maxItems=MAX_CI_FILES,
        items=_SOURCE,
        title="Source files",
        description=(
            "The changed source files: each {path, blob_sha, content} (text) or {path, blob_sha, content_b64} "
            f"(the webhook's form); at most {MAX_CI_FILES}. Replace the template."
        ),
    ),
    "job_id": Param(
        None,
        type=["string", "null"],
        minLength=1,
        maxLength=40,
        description="The job (the webhook's UUID); empty: derived from the DAG run id.",
    ),
    "commit_sha": Param(None, type=["string", "null"], maxLength=64, description="The commit checked."),
    "rerun": Param(False, type="boolean", description="A re-run request: never reuse an earlier run."),
    "event": Param(
        None,
        type=["string", "null"],
        enum=["push", "pull_request", "issue_comment", None],
        description="The GitHub event (a pull request or a re-run comment runs under the standard limits).",
    ),
    "delivery_id": Param(None, type=["string", "null"], description="The GitHub delivery id."),
    "github": Param(
        None,
        type=["object", "null"],
        properties=_GITHUB["properties"],
        additionalProperties=False,
        description="Where to post the commit statuses: {status_url, comments_url, owner, repository}.",
    ),
}
