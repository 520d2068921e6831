"""`fleetgate certs init|issue|passwd`: files where the help says, keys never printed, device ids
checked, passwords never taken from the command line."""

from __future__ import annotations

import base64
import io
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway import certs
from gateway.cli import main


def _san(path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (san.get_values_for_type(x509.DNSName),
            [str(a) for a in san.get_values_for_type(x509.IPAddress)])


def test_init_defaults_to_this_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "init", str(tmp_path / "pki")]) == 0
    assert _san(tmp_path / "pki" / "server.crt") == (["localhost"], ["127.0.0.1"])
    out = capsys.readouterr().out
    assert str(tmp_path / "pki" / "ca.crt") in out
    assert "PRIVATE KEY" not in out


def test_init_names_only_what_was_asked(tmp_path: Path) -> None:
    assert main(["certs", "init", str(tmp_path), "--host", "mqtt.example", "--host",
                 "broker.lan", "--ip", "10.0.0.5"]) == 0
    assert _san(tmp_path / "server.crt") == (["mqtt.example", "broker.lan"], ["10.0.0.5"])


def test_init_twice_is_refused_and_keeps_the_ca(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "init", str(tmp_path)]) == 0
    key = (tmp_path / "ca.key").read_bytes()
    assert main(["certs", "init", str(tmp_path)]) == 2
    assert "already holds a CA" in capsys.readouterr().err
    assert (tmp_path / "ca.key").read_bytes() == key


def test_issue_writes_the_device_certificate(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "init", str(tmp_path)]) == 0
    assert main(["certs", "issue", str(tmp_path), "dev-a"]) == 0
    cert_path, key_path = tmp_path / "clients" / "dev-a.crt", tmp_path / "clients" / "dev-a.key"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-a"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert str(cert_path) in out
    assert "PRIVATE KEY" not in out

    assert main(["certs", "issue", str(tmp_path), "dev-a"]) == 2
    assert "--force" in capsys.readouterr().err
    old = key_path.read_bytes()
    assert main(["certs", "issue", str(tmp_path), "dev-a", "--force"]) == 0
    assert key_path.read_bytes() != old


@pytest.mark.parametrize("bad", ["dev/a", "dev+", "#", "_gateway", "a b"])
def test_issue_refuses_what_is_not_a_device_id(tmp_path: Path, bad: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "init", str(tmp_path)]) == 0
    assert main(["certs", "issue", str(tmp_path), bad]) == 2
    assert "not a valid device id" in capsys.readouterr().err
    assert not list(tmp_path.glob("clients/*"))


def test_issue_without_init_says_what_to_run(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "issue", str(tmp_path), "dev-a"]) == 2
    assert f"fleetgate certs init {tmp_path}" in capsys.readouterr().err


def test_passwd_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-pw\n")  # the trailing newline of `echo pw > file` is no part of it
    passwd = tmp_path / "passwd"
    assert main(["certs", "passwd", str(passwd), "dev-a", "--password-file", str(secret)]) == 0
    assert "added dev-a" in capsys.readouterr().out
    line = passwd.read_text().strip()
    salt = line.split("$")[3]
    assert line == certs.password_line("dev-a", "s3cret-pw", salt=base64.b64decode(salt))
    assert main(["certs", "passwd", str(passwd), "dev-a", "--password-file", str(secret)]) == 0
    out = capsys.readouterr().out
    assert "replaced dev-a" in out
    assert "s3cret" not in out
    assert len(passwd.read_text().splitlines()) == 1


def test_passwd_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from-stdin\n"))
    passwd = tmp_path / "passwd"
    assert main(["certs", "passwd", str(passwd), "dev-b"]) == 0
    line = passwd.read_text().strip()
    salt = base64.b64decode(line.split("$")[3])
    assert line == certs.password_line("dev-b", "from-stdin", salt=salt)


def test_passwd_refuses_an_empty_password_and_a_bad_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    passwd = tmp_path / "passwd"
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["certs", "passwd", str(passwd), "dev-a"]) == 2
    assert "empty password" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["certs", "passwd", str(passwd), "dev:a"]) == 2
    assert "not a valid device id" in capsys.readouterr().err
    assert main(["certs", "passwd", str(passwd), "dev-a", "--password-file",
                 str(tmp_path / "missing")]) == 2
    assert "cannot read the password file" in capsys.readouterr().err
    assert not passwd.exists()


def test_passwd_takes_no_password_argument(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A password on the command line is visible to every user in `ps`: there is no option
    for it, so a script that tries one fails instead of leaking it."""
    with pytest.raises(SystemExit) as exited:
        main(["certs", "passwd", str(tmp_path / "passwd"), "dev-a", "hunter2"])
    assert exited.value.code == 2
    # Not even abbreviated: argparse would otherwise take it for --password-file.
    with pytest.raises(SystemExit):
        main(["certs", "passwd", str(tmp_path / "passwd"), "dev-a", "--password", "hunter2"])
    assert "unrecognized arguments" in capsys.readouterr().err
    assert not (tmp_path / "passwd").exists()


def test_the_installed_command_runs_it(tmp_path: Path) -> None:
    """Through the real entry point, with the password piped in as an operator would."""
    run = [sys.executable, "-m", "gateway.cli", "certs"]
    subprocess.run([*run, "init", str(tmp_path)], check=True, capture_output=True)
    subprocess.run([*run, "issue", str(tmp_path), "fleetgate"], check=True, capture_output=True)
    result = subprocess.run([*run, "passwd", str(tmp_path / "passwd"), "dev-c"],
                            input="pw-c\n", text=True, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "clients" / "fleetgate.crt").exists()
    assert (tmp_path / "passwd").read_text().startswith("dev-c:$7$101$")
