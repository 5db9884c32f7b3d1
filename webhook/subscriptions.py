"""Subscriptions to a source by e-mail (machine-ci.md §11): double opt-in, one-click unsubscribe (RFC 8058).

* ``POST /subscriptions`` (form ``source``, the path below ``sources/`` without ``.json``, and ``email``): records
  an unconfirmed subscription (or finds the existing one) and mails the **confirmation**: a link signed with the
  app's ``SECRET_KEY`` (itsdangerous, valid 7 days) carrying the subscription's id and address. 400 for a bad
  address or a source without runs; 503 "Subscriptions are off" when the app has no ``SMTP_URL`` or no
  ``SECRET_KEY`` (never a form that silently sends nothing); 502 when the mail server refuses.
* ``GET /subscriptions/confirm/<signed>``: confirms (the source's present state is what the subscriber knows, so
  the first message is a change); 400 for a link that is forged, altered or older than 7 days.
* ``GET /subscriptions/<token>/unsubscribe``: a page with one button (a GET never unsubscribes: mail scanners open
  links); ``POST`` (the button, or a mail client's RFC 8058 ``List-Unsubscribe=One-Click``) deletes the
  subscription. ``token`` is the subscription's random token, stored, so every message the Airflow side sends can
  carry the link without sharing the app's secret.

The form needs no CSRF token: a forged POST can only do what anyone can do with the form (ask for a confirmation
mail), and unsubscribing needs the secret token.
"""

from __future__ import annotations

import logging
import smtplib
from typing import TYPE_CHECKING, Any

from flask import Blueprint, current_app, render_template, request, url_for
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from openaddr.alerts import InvalidEmail, check_email, confirmation_message, source_page_url, unsubscribe_url
from openaddr.db.alerts import (
    confirm_subscription,
    restart_confirmation,
    subscribe,
    subscription_by_token,
    unsubscribe,
)
from openaddr.db.results import source_timeline
from openaddr.db.runs import utcnow
from openaddr.mail import MailConfigurationError, parse_smtp_url, send
from webhook.db import get_engine

if TYPE_CHECKING:
    from openaddr.mail import SmtpServer

log = logging.getLogger(__name__)

bp = Blueprint("subscriptions", __name__)

#: Seconds a confirmation link is valid.
CONFIRM_MAX_AGE = 7 * 24 * 3600
#: itsdangerous salt: these signatures mean nothing elsewhere.
SALT = "openaddr-subscription-confirm"


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def subscriptions_off() -> str | None:
    """Why subscriptions are off (no ``SMTP_URL``, a bad one, or no ``SECRET_KEY``), or None when they are on."""
    if not current_app.config.get("SECRET_KEY"):
        return "this site has no secret key to sign confirmation links (OA_WEBHOOK_SECRET_KEY)"
    url = current_app.config.get("SMTP_URL")
    if not url:
        return "this site has no mail server configured (OA_WEBHOOK_SMTP_URL)"
    try:
        parse_smtp_url(url)
    except MailConfigurationError as exc:
        return f"the mail server setting OA_WEBHOOK_SMTP_URL is invalid: {exc}"
    return None


def _smtp() -> SmtpServer:
    return parse_smtp_url(current_app.config["SMTP_URL"])


def _base_url() -> str:
    return str(current_app.config.get("BASE_URL") or request.host_url).rstrip("/")


def _page(title: str, message: str, status: int = 200, **extra: Any) -> tuple[str, int]:
    return render_template("subscription.html", title=title, message=message, **extra), status


@bp.post("/subscriptions")
def subscribe_form() -> tuple[str, int]:
    """Record a subscription and mail its confirmation link."""
    off = subscriptions_off()
    if off:
        return _page("Subscriptions are off", f"Subscriptions are off: {off}.", 503)
    source = (request.form.get("source") or "").strip().strip("/")
    try:
        email = check_email(request.form.get("email", ""))
    except InvalidEmail as exc:
        return _page("Not subscribed", f"{exc}.", 400)
    source_path = f"sources/{source}.json"
    engine = get_engine()
    if not source or ".." in source.split("/") or not source_timeline(engine, source_path):
        return _page("Not subscribed", f"Source {source or '(none)'} has no runs to follow.", 400)
    asked = utcnow()
    subscription = subscribe(engine, email, source_path)
    base = _base_url()
    if subscription["datetime_confirmed"] is not None:
        return _page("Already subscribed", f"{email} is already subscribed to {source_path}.", 200)
    sent = subscription["datetime_created"]
    if sent < asked and (asked - sent).total_seconds() < CONFIRM_MAX_AGE:
        # A form anyone can post must not make the site mail an address again and again: one confirmation a
        # subscription while its link is valid, a new one only once it expired.
        return _page(
            "Check your inbox",
            f"A confirmation link went to {email} at {sent:%Y-%m-%d %H:%M} UTC; it is valid for 7 days.",
        )
    if sent < asked:
        subscription = restart_confirmation(engine, subscription["id"], now=asked)
    signed = _serializer().dumps({"id": subscription["id"], "email": email})
    message = confirmation_message(
        subscription,
        confirm_url=base + url_for("subscriptions.confirm", signed=signed),
        unsubscribe=unsubscribe_url(base, subscription["token"]),
        source_url=source_page_url(base, source_path),
    )
    try:
        send(_smtp(), message)
    except (smtplib.SMTPException, OSError) as exc:
        log.error("Could not send the confirmation of subscription %s: %s", subscription["id"], exc)
        return _page(
            "Not sent", "The mail server did not take the confirmation message; try again later.", 502
        )
    return _page(
        "Check your inbox",
        f"A message with a confirmation link went to {email}. Nothing is sent to you about {source_path} until "
        "you open it.",
    )


@bp.get("/subscriptions/confirm/<signed>")
def confirm(signed: str) -> tuple[str, int]:
    """Confirm a subscription from its signed link."""
    if not current_app.config.get("SECRET_KEY"):
        return _page("Subscriptions are off", f"Subscriptions are off: {subscriptions_off()}.", 503)
    try:
        data = _serializer().loads(signed, max_age=CONFIRM_MAX_AGE)
    except SignatureExpired:
        return _page("Link expired", "This confirmation link is older than 7 days: subscribe again.", 400)
    except BadSignature:
        return _page("Invalid link", "This confirmation link is not valid.", 400)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("id"), int)
        or not isinstance(data.get("email"), str)
    ):
        return _page("Invalid link", "This confirmation link is not valid.", 400)
    subscription = confirm_subscription(get_engine(), data["id"], data["email"])
    if subscription is None:
        return _page("No subscription", "This subscription does not exist any more: subscribe again.", 404)
    return _page(
        "Subscribed",
        f"{subscription['email']} will be told when {subscription['source_path']} breaks or recovers. Every "
        "message carries a link to unsubscribe.",
    )


@bp.route("/subscriptions/<token>/unsubscribe", methods=["GET", "POST"])
def unsubscribe_page(token: str) -> tuple[str, int]:
    """GET: a page with the unsubscribe button; POST (the button or RFC 8058's one click): unsubscribe."""
    engine = get_engine()
    if request.method == "GET":
        subscription = subscription_by_token(engine, token)
        if subscription is None:
            return _page("Not subscribed", "This subscription does not exist (any more).", 404)
        return _page(
            "Unsubscribe",
            f"Stop the messages about {subscription['source_path']} to {subscription['email']}?",
            unsubscribe_action=url_for("subscriptions.unsubscribe_page", token=token),
        )
    removed = unsubscribe(engine, token)
    if removed is None:
        return _page("Not subscribed", "This subscription does not exist (any more).", 404)
    log.info("Subscription %s unsubscribed", removed["id"])
    return _page("Unsubscribed", f"{removed['email']} gets no more messages about {removed['source_path']}.")


def subscribe_status() -> dict[str, Any]:
    """What the source page's form needs: whether subscriptions are on, and why not."""
    off = subscriptions_off()
    return {"on": off is None, "off_reason": off}
