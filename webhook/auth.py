"""Who may decide on held runs (machine-ci.md §9.2): members of a GitHub organisation signed in with GitHub OAuth,
or scripts with an API token; and the CSRF protection of the site's forms.

**Sign-in** (GitHub's web application flow, by hand with ``requests``; README "Design decisions"):

1. ``GET /auth/login?next=/review/``: a random ``state`` goes into the session, then 302 to
   ``<GITHUB_OAUTH_URL>/login/oauth/authorize`` with the client id, the callback URL and scope ``read:org``;
2. ``GET /auth/callback?code=…&state=…``: the state must be the session's (``hmac.compare_digest``), else 400; the code
   is exchanged at ``<GITHUB_OAUTH_URL>/login/oauth/access_token``, the login read from ``<GITHUB_API_URL>/user``
   and the membership from ``<GITHUB_API_URL>/user/memberships/orgs/<MAINTAINERS_ORG>`` (``state`` ``active``);
   a non-member gets 403 and no session. The access token is used for those two calls and then dropped: the
   session keeps the login only, for ``PERMANENT_SESSION_LIFETIME`` (12 h by default), which bounds how long a
   member removed from the organisation can still decide;
3. ``POST /auth/logout`` (a CSRF-protected form) clears the session.

The session is Flask's signed cookie (``SECRET_KEY``), ``Secure``, ``HttpOnly``, ``SameSite=Lax`` by default
(``SESSION_COOKIE_SECURE=false`` only for plain-http development, as ``make run`` does on loopback).

**API tokens**: ``Authorization: Bearer <token>`` on ``POST /runs/<id>/accept`` and ``/reject``; tokens are made by
``flask --app webhook review-token create NAME`` (printed once, stored hashed: :mod:`openaddr.db.review`). A request
with a bearer token carries no cookie that a forged request could ride on, so it skips the CSRF check.

**CSRF**: Flask-WTF's :class:`~flask_wtf.csrf.CSRFProtect`, checked explicitly (``WTF_CSRF_CHECK_DEFAULT`` off, so
``POST /hook``, signed by GitHub, is not checked) on every form post of the site: a missing or wrong token is 400.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import click
import requests
from flask import Blueprint, abort, current_app, redirect, request, session, url_for
from flask.cli import AppGroup
from flask_wtf.csrf import CSRFProtect

from openaddr.db.review import create_token, revoke_token, token_name
from webhook.db import get_engine

if TYPE_CHECKING:
    from flask import Flask, Response

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()

#: Settings sign-in needs; named in the 503 answer when one is missing.
SIGN_IN_SETTINGS = ("SECRET_KEY", "GITHUB_CLIENT_ID", "GITHUB_CLIENT_SECRET")


class SignInError(Exception):
    """Sign-in failed: ``status`` and a text for the person signing in."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def sign_in_configured(app: Flask | None = None) -> bool:
    """Whether GitHub sign-in has what it needs (a secret key, the OAuth app's id and secret)."""
    config = (app or current_app).config
    return all(config.get(key) for key in SIGN_IN_SETTINGS)


def missing_settings() -> list[str]:
    """The sign-in settings not set, by their environment names."""
    return [f"OA_WEBHOOK_{key}" for key in SIGN_IN_SETTINGS if not current_app.config.get(key)]


def signed_in_login() -> str | None:
    """The GitHub login of this request's session, or None."""
    if not current_app.secret_key:
        return None
    login = session.get("login")
    return login if isinstance(login, str) and login else None


def _plain(body: str, status: int) -> Response:
    from webhook.sources import text

    return text(body, status)


def _safe_next(value: str | None) -> str:
    """A local path to return to after signing in (never another origin: ``//host`` and ``\\`` are refused)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return url_for("review.queue")


def callback_url() -> str:
    """The callback URL GitHub returns to: ``BASE_URL`` + ``/auth/callback``, else the request's."""
    base = current_app.config.get("BASE_URL")
    return f"{base}{url_for('auth.callback')}" if base else url_for("auth.callback", _external=True)


@bp.get("/auth/login")
def login() -> Response:
    """Start GitHub sign-in (302 to GitHub's authorize page); 503 naming the settings when it is not configured."""
    if not sign_in_configured():
        return _plain(f"GitHub sign-in is not configured: set {', '.join(missing_settings())}", 503)
    state = secrets.token_urlsafe(32)
    session["oauth_state"] = state
    session["oauth_next"] = _safe_next(request.args.get("next"))
    query = urlencode(
        {
            "client_id": current_app.config["GITHUB_CLIENT_ID"],
            "redirect_uri": callback_url(),
            "scope": "read:org",
            "state": state,
            "allow_signup": "false",
        }
    )
    response = redirect(f"{oauth_url()}/login/oauth/authorize?{query}", code=302)
    response.headers["Cache-Control"] = "no-store"
    return response


def oauth_url() -> str:
    """GitHub's OAuth root (authorize and access-token endpoints)."""
    return str(current_app.config["GITHUB_OAUTH_URL"]).rstrip("/")


def api_url() -> str:
    """GitHub's REST API root (``/user``, the membership)."""
    return str(current_app.config.get("GITHUB_API_URL") or "https://api.github.com").rstrip("/")


def _github(method: str, url: str, **options: Any) -> requests.Response:
    try:
        return requests.request(method, url, timeout=float(current_app.config["GITHUB_TIMEOUT"]), **options)
    except requests.RequestException as error:
        raise SignInError(502, f"Sign-in failed: GitHub did not answer ({type(error).__name__})") from error


def _json(answer: requests.Response) -> dict[str, Any]:
    """An answer's JSON object, or an empty one when it is not one."""
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def github_login(code: str) -> str:
    """Exchange the code, then the login of its user, who must be an active member of ``MAINTAINERS_ORG``.

    :raises SignInError: GitHub refused the code or did not answer (400, 502), or the user is not a member (403)
    """
    config = current_app.config
    answer = _github(
        "POST",
        f"{oauth_url()}/login/oauth/access_token",
        data={
            "client_id": config["GITHUB_CLIENT_ID"],
            "client_secret": config["GITHUB_CLIENT_SECRET"],
            "code": code,
            "redirect_uri": callback_url(),
        },
        headers={"Accept": "application/json"},
    )
    body = _json(answer)
    token = body.get("access_token")
    if answer.status_code != 200 or not isinstance(token, str) or not token:
        reason = body.get("error_description") or body.get("error")
        raise SignInError(400, f"Sign-in failed: GitHub refused the code ({reason or answer.status_code})")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
    user = _github("GET", f"{api_url()}/user", headers=headers)
    login_name = _json(user).get("login") if user.status_code == 200 else None
    if not isinstance(login_name, str) or not login_name:
        raise SignInError(502, f"Sign-in failed: GitHub's /user answered {user.status_code}")
    org = config["MAINTAINERS_ORG"]
    membership = _github("GET", f"{api_url()}/user/memberships/orgs/{org}", headers=headers)
    state = _json(membership).get("state") if membership.status_code == 200 else None
    if state != "active":
        log.warning(
            "Sign-in refused: %s is not an active member of %s (%s)", login_name, org, membership.status_code
        )
        raise SignInError(
            403,
            f"{login_name} is not a member of the GitHub organisation {org}: only its members review runs",
        )
    return login_name


@bp.get("/auth/callback")
def callback() -> Response:
    """GitHub's redirect back: check the state, exchange the code, check the membership, sign in."""
    if not sign_in_configured():
        return _plain(f"GitHub sign-in is not configured: set {', '.join(missing_settings())}", 503)
    expected = session.pop("oauth_state", None)
    next_url = _safe_next(session.pop("oauth_next", None))
    given = request.args.get("state", "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), given.encode()):
        return _plain(
            "Sign-in failed: the state does not match this browser's (start again at /auth/login)", 400
        )
    if request.args.get("error"):
        return _plain(f"Sign-in cancelled at GitHub: {request.args.get('error')}", 403)
    code = request.args.get("code", "")
    if not code:
        return _plain("Sign-in failed: GitHub sent no code", 400)
    try:
        login_name = github_login(code)
    except SignInError as error:
        return _plain(error.text, error.status)
    session.clear()
    session.permanent = True
    session["login"] = login_name
    log.info("%s signed in", login_name)
    response = redirect(next_url, code=303)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/auth/logout")
def logout() -> Response:
    """Sign out (a CSRF-protected form)."""
    if not current_app.secret_key:
        abort(404)
    csrf.protect()
    session.clear()
    return redirect(url_for("review.queue"), code=303)


def reviewer() -> tuple[str, str]:
    """Who makes this request's decision: ``(name, kind)``, ``kind`` ``token`` or ``github``.

    A bearer token must be a live API token (else 401); without one, the form's CSRF token is checked (400) and the
    session must be signed in (else 401).
    """
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            abort(_plain("Authorization must be 'Bearer <API token>'", 401))
        name = token_name(get_engine(), value.strip())
        if name is None:
            abort(_plain("Unknown or revoked API token", 401))
        return name, "token"
    if not current_app.secret_key:
        abort(
            _plain(f"Sign-in is not configured (set {', '.join(missing_settings())}); use an API token", 401)
        )
    csrf.protect()
    login_name = signed_in_login()
    if login_name is None:
        abort(_plain("Sign in with GitHub first (/auth/login)", 401))
    return login_name, "github"


# -- the command line ----------------------------------------------------------------------------------------------


token_cli = AppGroup("review-token", help="API tokens of scripts that accept or reject held runs.")


@token_cli.command("create")
@click.argument("name")
def create_command(name: str) -> None:
    """Create the API token NAME and print it (only now: the database keeps its hash)."""
    try:
        token = create_token(get_engine(), name)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    click.echo(token)


@token_cli.command("revoke")
@click.argument("name")
def revoke_command(name: str) -> None:
    """Revoke the API token NAME."""
    try:
        revoke_token(get_engine(), name)
    except LookupError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"Revoked {name}")


def init_app(app: Flask) -> None:
    """CSRF protection (checked by the routes that take forms), the command line, the blueprint."""
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    csrf.init_app(app)
    app.cli.add_command(token_cli)
    app.register_blueprint(bp)
