"""The C SDK (sdk/c) through its own make targets, with the real toolchains:

- `make test`: host build under ASan/UBSan, the C unit tests, and the payloads decoded by
  device_protocol (sdk/c/tests/check_roundtrip.py);
- `make cortex-m4` / `make riscv32`: the library and a test image for each instruction set
  (checked by the ELF headers: 32-bit, ARM / RISC-V, RVC for rv32imc);
- `make size`: the encoder + ring fit the 4 KiB flash goal on both targets, no static RAM;
- `make qemu-test`: the Cortex-M4 image's payloads under qemu-system-arm equal the host's.

Every build goes to a temporary directory (make B=...), so a developer's sdk/c/build is left
alone. A missing tool skips locally and fails in CI (tests/support/tools.py).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import system_tool

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "c"
FLASH_GOAL = 4096
EM_ARM, EM_RISCV = 40, 243
EF_RISCV_RVC = 0x1


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    system_tool("make", "make")
    return tmp_path_factory.mktemp("c-sdk-build")


def make(build_dir: Path, target: str) -> str:
    result = subprocess.run(
        ["make", "-C", str(SDK), target, f"B={build_dir}", f"PYTHON={sys.executable}"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make {target} failed:\n{output[-4000:]}"
    return output


def elf_header(path: Path) -> tuple[int, int, int]:
    """(class, e_machine, e_flags) of a little-endian ELF32 file."""
    data = path.read_bytes()[:52]
    assert data[:4] == b"\x7fELF", f"{path} is not ELF"
    machine = struct.unpack_from("<H", data, 18)[0]
    flags = struct.unpack_from("<I", data, 36)[0]
    return data[4], machine, flags


def test_host_unit_tests_and_python_decoder_round_trip(build_dir: Path) -> None:
    system_tool("cc", "gcc")
    output = make(build_dir, "test")
    assert re.search(r"test_unit: \d{3,} checks, 0 failed", output), output
    assert "check_roundtrip: ok" in output, output


def test_cortex_m4_build(build_dir: Path) -> None:
    system_tool("arm-none-eabi-gcc", "gcc-arm-none-eabi (+ libnewlib-arm-none-eabi)")
    make(build_dir, "cortex-m4")
    assert (build_dir / "cortex-m4" / "libfleetgate.a").stat().st_size > 0
    assert elf_header(build_dir / "cortex-m4" / "test.elf")[:2] == (1, EM_ARM)


def test_riscv32_build(build_dir: Path) -> None:
    system_tool("riscv64-unknown-elf-gcc", "gcc-riscv64-unknown-elf + picolibc-riscv64-unknown-elf")
    make(build_dir, "riscv32")
    assert (build_dir / "riscv32" / "libfleetgate.a").stat().st_size > 0
    elf_class, machine, flags = elf_header(build_dir / "riscv32" / "test.elf")
    assert (elf_class, machine) == (1, EM_RISCV)  # ELFCLASS32: rv32
    assert flags & EF_RISCV_RVC, "not built for the C extension (rv32imc)"


def test_size_meets_the_flash_goal_with_no_static_ram(build_dir: Path) -> None:
    system_tool("arm-none-eabi-gcc", "gcc-arm-none-eabi (+ libnewlib-arm-none-eabi)")
    system_tool("riscv64-unknown-elf-gcc", "gcc-riscv64-unknown-elf + picolibc-riscv64-unknown-elf")
    output = make(build_dir, "size")
    for target in ("cortex-m4", "riscv32"):
        found = re.search(rf"^{target} encoder\+ring: flash (\d+) B, RAM (\d+) B$", output, re.M)
        assert found, output
        assert int(found.group(1)) < FLASH_GOAL, found.group(0)
        assert int(found.group(2)) == 0, found.group(0)
        library = re.search(rf"^{target} library: flash \d+ B, RAM 0 B$", output, re.M)
        assert library, f"the library has static RAM on {target}:\n{output}"
        assert re.search(rf"^{target} max stack: \d+ B \(upper bound;", output, re.M), output


def test_cortex_m4_image_under_qemu_writes_the_host_payloads(build_dir: Path) -> None:
    system_tool("arm-none-eabi-gcc", "gcc-arm-none-eabi (+ libnewlib-arm-none-eabi)")
    system_tool("qemu-system-arm", "qemu-system-arm")
    system_tool("cc", "gcc")
    output = make(build_dir, "qemu-test")
    assert "check_roundtrip: ok" in output and "identical in" in output, output
    qemu_lines = (build_dir / "cortex-m4" / "qemu.txt").read_text().splitlines()
    assert qemu_lines[-1] == "end 0" and len(qemu_lines) > 20
