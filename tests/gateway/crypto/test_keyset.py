"""Keys from configuration: a replica on another host is given the same keys as
settings (base64) or files in a mounted directory, and never makes its own."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.crypto.keyfiles import KeyFileError
from gateway.crypto.keyset import SECRETS, GatewayKeys, env_name
from gateway.settings import Settings

COOPGATE = str(Path(sys.executable).parent / "coopgate")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COOPGATE_")}
    env.update(extra)
    return env


def test_secrets_init_then_env_carry_the_same_keys_to_a_host_without_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "first-host"
    subprocess.run(
        [COOPGATE, "secrets", "init", "--data-dir", str(data)], check=True, env=_clean_env()
    )
    assert {p.name for p in (data / "secrets").iterdir()} == {f for f, _ in SECRETS.values()}
    for path in (data / "secrets").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
    printed = subprocess.run(
        [COOPGATE, "secrets", "env", "--data-dir", str(data)],
        check=True,
        capture_output=True,
        text=True,
        env=_clean_env(),
    ).stdout
    settings_env = dict(line.split("=", 1) for line in printed.splitlines())
    assert set(settings_env) == {env_name(n) for n in SECRETS}
    from_files = GatewayKeys.load(Settings(data_dir=data), create=False)

    elsewhere = tmp_path / "second-host"  # no data dir at all
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    from_env = GatewayKeys.load(Settings(data_dir=elsewhere), create=False)
    assert from_env == from_files
    assert not elsewhere.exists()


def test_a_replica_never_creates_a_missing_key_and_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="set COOPGATE_MASTER_KEY") as caught:
        GatewayKeys.load(Settings(data_dir=tmp_path), create=False)
    assert "secrets init" in str(caught.value)
    assert not (tmp_path / "secrets").exists()
    # The embedded stack creates them, once: a second load reads the same.
    made = GatewayKeys.load(Settings(data_dir=tmp_path), create=True)
    assert GatewayKeys.load(Settings(data_dir=tmp_path), create=False) == made


def test_a_mounted_secrets_directory_replaces_the_data_dirs(tmp_path: Path) -> None:
    mounted = tmp_path / "run-secrets"
    made = GatewayKeys.load(Settings(secrets_directory=mounted), create=True)
    settings = Settings(data_dir=tmp_path / "empty", secrets_directory=mounted)
    assert GatewayKeys.load(settings, create=False) == made
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("not base64!", "COOPGATE_MASTER_KEY is not base64"),
        (base64.b64encode(b"x" * 16).decode(), "holds 16 bytes where 32 are expected"),
    ],
)
def test_a_bad_key_setting_stops_the_start_naming_it(
    tmp_path: Path, value: str, error: str
) -> None:
    GatewayKeys.load(Settings(data_dir=tmp_path), create=True)
    with pytest.raises(KeyFileError, match=error):
        GatewayKeys.load(Settings(data_dir=tmp_path, master_key=SecretStr(value)), create=False)


def test_a_key_setting_wins_over_the_file(tmp_path: Path) -> None:
    files = GatewayKeys.load(Settings(data_dir=tmp_path), create=True)
    other = os.urandom(32)
    given = GatewayKeys.load(
        Settings(data_dir=tmp_path, master_key=SecretStr(base64.b64encode(other).decode())),
        create=False,
    )
    assert given.master == other != files.master
    assert given.pseudonym == files.pseudonym
