"""HTTP for downloads: credentials (environment or netrc, never params), a basic-auth client
that sends them only to the same host, and URLs made safe for messages."""

from __future__ import annotations

import base64
import http.client
import netrc
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PipelineError

TIMEOUT = 60  # seconds without data before a connection counts as dropped


class _Transient(Exception):
    """A network problem worth resuming after."""


@dataclass(frozen=True)
class Credentials:
    username: str = field(repr=False)
    password: str = field(repr=False)
    origin: str = ""  # where they came from (names only), for messages
    fix: str = ""  # what to change when the server refuses them


def env_names(ds: str) -> tuple[str, str]:
    return f"{ds.upper()}_USERNAME", f"{ds.upper()}_PASSWORD"


def netrc_path() -> Path:
    return Path(os.environ["NETRC"]).expanduser() if os.environ.get("NETRC") else Path.home() / ".netrc"


def public_url(url: str) -> str:
    """The URL without user info, query or fragment: safe for messages and records."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    return urllib.parse.urlunsplit((p.scheme, host + (f":{p.port}" if p.port else ""), p.path, "", ""))


def find_credentials(ds: str, host: str) -> Credentials | None:
    user_var, pass_var = env_names(ds)
    user, password = os.environ.get(user_var), os.environ.get(pass_var)
    if user or password:
        if not (user and password):
            missing, present = (pass_var, user_var) if user else (user_var, pass_var)
            raise PipelineError(
                f"{ds.upper()}: {present} is set but {missing} is not: set both, or neither "
                f"to use the netrc entry for {host}"
            )
        return Credentials(
            user, password, f"the environment variables {user_var}/{pass_var}", f"{user_var} and {pass_var}"
        )
    path = netrc_path()
    if not path.is_file():
        return None
    try:  # file=None lets the netrc module insist on owner-only permissions of ~/.netrc
        entries = netrc.netrc(str(path) if os.environ.get("NETRC") else None)
    except netrc.NetrcParseError as exc:  # its message may quote a token: not shown
        raise PipelineError(
            f"{ds.upper()}: cannot use the netrc file {path} (line {exc.lineno}): fix its syntax, "
            "and make it readable by you only (chmod 600)"
        ) from None
    except OSError as exc:
        raise PipelineError(f"{ds.upper()}: cannot read the netrc file {path}: {exc.strerror}") from None
    auth = entries.authenticators(host)
    if not auth or not auth[0] or not auth[2]:
        return None
    return Credentials(
        auth[0], auth[2], f"the netrc file {path} (machine {host})", f"the 'machine {host}' entry in {path}"
    )


class _SameHostRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but send the credentials again only to the same host (never downgraded)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth:
            old, nxt = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
            if nxt.hostname == old.hostname and (nxt.scheme == old.scheme or nxt.scheme == "https"):
                new.add_unredirected_header("Authorization", auth)
        return new


class Client:
    def __init__(self, ds: str, creds: Credentials | None):
        self.ds, self.creds = ds, creds
        self.opener = urllib.request.build_opener(_SameHostRedirect)
        token = f"{creds.username}:{creds.password}".encode() if creds else None
        self._auth = "Basic " + base64.b64encode(token).decode("ascii") if token else None

    def open(self, url: str, method: str = "GET", headers: dict | None = None, when: str = ""):
        """The response (an HTTPError for 416, which callers handle); other failures raise."""
        req = urllib.request.Request(url, method=method, headers=headers or {})
        if self._auth:
            req.add_unredirected_header("Authorization", self._auth)
        try:
            return self.opener.open(req, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 or (method == "HEAD" and exc.code in (405, 501)):
                return exc  # open: the caller reads its headers and closes it
            exc.close()
            if exc.code in (401, 403):
                raise self._refused(url, exc.code, exc.reason, when) from None
            if exc.code >= 500 or exc.code == 429:
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
            raise PipelineError(
                f"{self.ds.upper()}: {public_url(url)} answered HTTP {exc.code} {exc.reason}: check "
                f"data.{self.ds}.url_base and data.{self.ds}.parts"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _Transient(str(getattr(exc, "reason", exc))) from None

    def _refused(self, url: str, code: int, reason: str, when: str) -> PipelineError:
        host = urllib.parse.urlsplit(url).hostname
        u, p = env_names(self.ds)
        if self.creds is None:
            return PipelineError(
                f"{self.ds.upper()}: {public_url(url)} needs a user name and password (HTTP {code} "
                f"{reason}) and none was found: set {u} and {p} to those of your BBC/VGG licence, or "
                f"add 'machine {host} login <user> password <password>' to {netrc_path()}. {when}"
            )
        return PipelineError(
            f"{self.ds.upper()}: the server refused the credentials from {self.creds.origin} (HTTP "
            f"{code} {reason}) for {public_url(url)}: fix {self.creds.fix}. {when}"
        )
