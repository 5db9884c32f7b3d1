"""The Machine's Flask app: GitHub's way in (``POST /hook``, machine-ci.md §2).

``create_app(test_config=None)`` is an application factory in the manner of Flask's tutorial ("flaskr"); there is
no module-level app. ``flask --app webhook run`` serves it for development, gunicorn in production
(``gunicorn 'webhook:create_app()'``).

Configuration, in this order (later wins): the defaults below, then the environment, then ``test_config``.

| variable | config key | meaning |
|---|---|---|
| ``GITHUB_WEBHOOK_SECRETS`` | ``GITHUB_WEBHOOK_SECRETS`` | comma-separated secrets; a delivery must be signed by one |
| ``OPENADDR_DATABASE_URL`` | ``DATABASE_URL`` | the Machine database (default ``$OPENADDR_HOME/machine.db``, else ``./var/machine.db``) |
| ``OA_WEBHOOK_GITHUB_TOKEN`` | ``GITHUB_TOKEN`` | token for every GitHub call (contents, compare, statuses) |
| ``OA_WEBHOOK_GITHUB_API_URL`` | ``GITHUB_API_URL`` | GitHub's REST API root (default ``https://api.github.com``) |
| ``OA_WEBHOOK_GAG_GITHUB_STATUS`` | ``GAG_GITHUB_STATUS`` | ``yes``/``true``/``1``: never post commit statuses |
| ``OA_WEBHOOK_REJECT_NEW_JOBS`` | ``REJECT_NEW_JOBS`` | ``yes``/``true``/``1``: answer every delivery 503 |
| ``OA_WEBHOOK_BASE_URL`` | ``BASE_URL`` | public URL of this site (job links in statuses) |
| ``OA_WEBHOOK_AIRFLOW_API_URL`` | ``AIRFLOW_API_URL`` | Airflow's api-server, e.g. ``http://127.0.0.1:8080`` |
| ``OA_WEBHOOK_AIRFLOW_USERNAME`` | ``AIRFLOW_USERNAME`` | the Airflow user that triggers ``openaddr_ci`` (role ``user`` or better) |
| ``OA_WEBHOOK_AIRFLOW_PASSWORD`` | ``AIRFLOW_PASSWORD`` | its password (``POST /auth/token``) |
| ``OA_WEBHOOK_TESTING`` | ``TESTING`` | testing: unsigned deliveries are accepted when no secret is set |
| ``OPENADDR_EMBEDDED`` | ``FILES_FOLDER`` | ``1``: serve the local storage (``OPENADDR_RESULTS`` if a folder, else ``$OPENADDR_HOME/storage``) under ``/files/`` |
| ``OA_WEBHOOK_FILES_FOLDER`` | ``FILES_FOLDER`` | a storage folder to serve under ``/files/`` (default: none, or the embedded one) |
| ``OPENADDR_RESULTS`` | ``RESULTS`` | the run storage the site reads samples from (default: ``FILES_FOLDER``) |
| ``OPENADDR_RESULTS_PUBLIC_URL`` | ``RESULTS_PUBLIC_URL`` | public URL of that storage (links to published files) |
| ``OA_WEBHOOK_SITE_MAX_AGE`` | ``SITE_MAX_AGE`` | ``Cache-Control: max-age`` of the site's pages, seconds (default 60) |
| ``OA_WEBHOOK_AIRFLOW_UI_URL`` | ``AIRFLOW_UI_URL`` | Airflow's UI, for links to task instances and their logs (default: none) |
| ``OA_WEBHOOK_DEBUG_HEADERS`` | ``DEBUG_HEADERS`` | ``yes``/``true``/``1``: ``GET /headers`` answers the request headers (default: 404) |
| ``OA_WEBHOOK_SITE_OWNER`` | ``SITE_OWNER`` | owner of the repository whose latest set the site shows (default ``openaddresses``) |
| ``OA_WEBHOOK_SITE_REPOSITORY`` | ``SITE_REPOSITORY`` | that repository (default ``openaddresses``) |
| ``OA_WEBHOOK_SECRET_KEY`` | ``SECRET_KEY`` | signs the session cookie, the forms' CSRF tokens and subscription confirmation links; required for sign-in, without it subscriptions are off |
| ``OA_WEBHOOK_GITHUB_CLIENT_ID`` | ``GITHUB_CLIENT_ID`` | the GitHub OAuth app's client id (sign-in of maintainers) |
| ``OA_WEBHOOK_GITHUB_CLIENT_SECRET`` | ``GITHUB_CLIENT_SECRET`` | its client secret |
| ``OA_WEBHOOK_GITHUB_OAUTH_URL`` | ``GITHUB_OAUTH_URL`` | where GitHub's OAuth endpoints are (default ``https://github.com``) |
| ``OA_WEBHOOK_MAINTAINERS_ORG`` | ``MAINTAINERS_ORG`` | the GitHub organisation whose members may review (default ``openaddresses``) |
| ``OA_WEBHOOK_SESSION_COOKIE_SECURE`` | ``SESSION_COOKIE_SECURE`` | ``Secure`` session cookie (default true; false for plain-http development) |
| ``OA_WEBHOOK_PERMANENT_SESSION_LIFETIME`` | ``PERMANENT_SESSION_LIFETIME`` | seconds a sign-in lasts (default 43200, 12 h) |
| ``OA_WEBHOOK_SMTP_URL`` | ``SMTP_URL`` | the mail server of subscription confirmations, as the URI of connection ``openaddr_alerts_smtp`` (``smtp://user:password@host:port?from_email=…``); without it subscriptions are off |

Any other Flask setting can be given as ``OA_WEBHOOK_<KEY>`` (:meth:`flask.Config.from_prefixed_env`).
Without a webhook secret the app refuses to start unless ``TESTING`` is set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

from openaddr.db import DATABASE_URL_VARIABLE, DEFAULT_FOLDER, default_database_url

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Prefix of the app's own environment variables.
ENV_PREFIX = "OA_WEBHOOK"
#: Secrets shared with the Airflow side keep their deployment-wide name (style guide point 14).
SECRETS_VARIABLE = "GITHUB_WEBHOOK_SECRETS"
#: GitHub's deliveries are at most 25 MB (§2.1 step 1).
MAX_BODY = 25 * 1024 * 1024

_TRUE = ("1", "true", "yes", "on")


class ConfigurationError(RuntimeError):
    """The app cannot start with this configuration (e.g. no webhook secret outside testing)."""


def as_bool(value: Any) -> bool:
    """A setting from the environment or a mapping as a boolean (``yes``/``true``/``1``/``on``, any case)."""
    if isinstance(value, bool):
        return value
    return str(value or "").strip().lower() in _TRUE


def parse_secrets(value: Any) -> list[str]:
    """``GITHUB_WEBHOOK_SECRETS``: a comma-separated string or a list; blanks dropped."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [str(item).strip() for item in items if str(item).strip()]


def embedded_storage_folder() -> str | None:
    """The embedded mode's run storage, as the tasks find it: ``OPENADDR_RESULTS`` when it is a local folder, else
    ``$OPENADDR_HOME/storage`` (else ``./var/storage``); None outside the embedded mode (``OPENADDR_EMBEDDED``
    unset) or when the storage is not a local folder."""
    from openaddr.settings import Settings

    settings = Settings.from_env()
    if not settings.embedded:
        return None
    if settings.results:
        return None if "://" in settings.results else str(Path(settings.results).resolve())
    return str(((settings.home or Path.cwd() / DEFAULT_FOLDER) / "storage").resolve())


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Create and configure the app.

    :param test_config: settings applied last (tests); its presence does not by itself mean testing
    :return: the app, with the ``hook`` blueprint registered
    :raises ConfigurationError: no webhook secret is configured and ``TESTING`` is not set
    """
    app = Flask(__name__)
    app.config.from_mapping(
        GITHUB_WEBHOOK_SECRETS=[],
        DATABASE_URL=None,
        GITHUB_TOKEN=None,
        GITHUB_API_URL=None,
        GITHUB_TIMEOUT=10.0,
        GAG_GITHUB_STATUS=False,
        REJECT_NEW_JOBS=False,
        BASE_URL=None,
        AIRFLOW_API_URL=None,
        AIRFLOW_USERNAME=None,
        AIRFLOW_PASSWORD=None,
        AIRFLOW_TIMEOUT=5.0,
        # Contents fetched at once: real GitHub answers in 0.2–0.4 s, 200 files must fit GitHub's 10 s.
        GITHUB_FETCH_WORKERS=32,
        MAX_CONTENT_LENGTH=MAX_BODY,
        FILES_FOLDER=None,
        RESULTS=None,
        RESULTS_PUBLIC_URL=None,
        SITE_MAX_AGE=60,
        AIRFLOW_UI_URL=None,
        DEBUG_HEADERS=False,
        SITE_OWNER="openaddresses",
        SITE_REPOSITORY="openaddresses",
        # Sign-in of maintainers (webhook/auth.py): GitHub OAuth, the session cookie, CSRF.
        SECRET_KEY=None,
        GITHUB_CLIENT_ID=None,
        GITHUB_CLIENT_SECRET=None,
        GITHUB_OAUTH_URL="https://github.com",
        MAINTAINERS_ORG="openaddresses",
        SESSION_COOKIE_NAME="oa_session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        WTF_CSRF_CHECK_DEFAULT=False,
        SMTP_URL=None,
    )
    app.config.from_prefixed_env(ENV_PREFIX)
    if SECRETS_VARIABLE in os.environ:
        app.config[SECRETS_VARIABLE] = os.environ[SECRETS_VARIABLE]
    if not app.config.get("FILES_FOLDER"):
        app.config["FILES_FOLDER"] = embedded_storage_folder()
    for key, variable in (
        ("RESULTS", "OPENADDR_RESULTS"),
        ("RESULTS_PUBLIC_URL", "OPENADDR_RESULTS_PUBLIC_URL"),
    ):
        if os.environ.get(variable, "").strip() and not app.config.get(key):
            app.config[key] = os.environ[variable].strip()
    if os.environ.get(DATABASE_URL_VARIABLE, "").strip():
        app.config["DATABASE_URL"] = os.environ[DATABASE_URL_VARIABLE].strip()
    if test_config is not None:
        app.config.from_mapping(test_config)

    app.config[SECRETS_VARIABLE] = parse_secrets(app.config[SECRETS_VARIABLE])
    for key in ("GAG_GITHUB_STATUS", "REJECT_NEW_JOBS", "TESTING", "DEBUG_HEADERS", "SESSION_COOKIE_SECURE"):
        app.config[key] = as_bool(app.config.get(key))
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = default_database_url()
    if app.config["BASE_URL"]:
        app.config["BASE_URL"] = str(app.config["BASE_URL"]).rstrip("/")
    if not app.config[SECRETS_VARIABLE] and not app.config["TESTING"]:
        raise ConfigurationError(
            f"No webhook secret: set {SECRETS_VARIABLE} (comma-separated) to the secrets of the GitHub webhook "
            f"(unsigned deliveries are accepted only with {ENV_PREFIX}_TESTING=true)"
        )
    if app.config["GITHUB_CLIENT_ID"] and not app.config["SECRET_KEY"]:
        raise ConfigurationError(
            f"{ENV_PREFIX}_GITHUB_CLIENT_ID is set but {ENV_PREFIX}_SECRET_KEY is not: sign-in needs a secret key "
            "to sign the session cookie and the forms' CSRF tokens"
        )

    from webhook import auth, db, hook, responses, review, sets, site, sources, subscriptions

    db.init_app(app)
    responses.init_app(app)
    app.register_blueprint(hook.bp)
    app.register_blueprint(site.bp)
    app.register_blueprint(sources.bp)
    app.register_blueprint(sets.bp)
    auth.init_app(app)
    app.register_blueprint(review.bp)
    app.register_blueprint(subscriptions.bp)
    return app
