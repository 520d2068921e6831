"""Secret files: read at start, re-read when they change, never shown; redact() removes what the
gateway sent from a receiver's answer."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gateway.credentials import CredentialFile, basic_credentials, redact
from gateway.errors import ConfigError


def test_the_secret_is_the_file_without_its_line_break(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("abc123\n")
    assert CredentialFile(path, "bearer_token_file").read() == "abc123"


def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old\n")
    cred = CredentialFile(path, "bearer_token_file")
    path.write_text("new-token\n")  # a different size: changed even within one mtime tick
    assert cred.read() == "new-token"
    replacement = tmp_path / "token.tmp"
    replacement.write_text("newer\n")
    os.replace(replacement, path)  # how operators and secret managers swap a file: new inode
    assert cred.read() == "newer"


def test_a_file_that_vanishes_or_empties_after_start_keeps_the_last_secret(
        tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("kept\n")
    cred = CredentialFile(path, "bearer_token_file")
    path.write_text("")  # a rewrite in progress
    assert cred.read() == "kept"
    path.unlink()
    assert cred.read() == "kept"


@pytest.mark.parametrize(("content", "words"), [
    (None, "cannot read"), ("", "is empty"), ("a\nb\n", "more than one line"),
    ("x" * 70_000, "one secret"),
])
def test_a_bad_file_at_start_is_a_config_error_naming_the_setting(
        tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        CredentialFile(path, "bearer_token_file of endpoint vm")
    assert "bearer_token_file of endpoint vm" in str(info.value) and words in str(info.value)
    if content:
        assert content.strip()[:20] not in str(info.value)


def test_the_repr_names_the_file_not_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("hunter2\n")
    assert "hunter2" not in repr(CredentialFile(path, "t"))


def test_redact_removes_the_secret_its_base64_and_any_auth_header_value() -> None:
    basic = basic_credentials("fleet", "pw-9")
    vmauth = 'cannot find the provided auth token "Bearer tok-1" in config'
    assert "tok-1" not in redact(vmauth, ["tok-1"])
    text = f"got Authorization: Basic {basic}; user fleet pw-9; echo {base64.b64encode(b'pw-9')}"
    out = redact(text, ["pw-9", basic])
    assert "pw-9" not in out and basic not in out and "cHctOQ" not in out
    assert redact("Bearer unknown-token", []) == "Bearer <redacted>"
    assert redact("nothing secret", ["", "zz"]) == "nothing secret"
