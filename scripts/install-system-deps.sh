#!/usr/bin/env bash
# Installs the system packages fleetgate's tests and demo run as real processes: Mosquitto,
# Prometheus (+ promtool) and VictoriaMetrics (+ vmagent, vmauth) from Debian bookworm, and python3-venv;
# and the tools that check the Docker stack without running it: docker-compose (1.29, for
# `docker-compose config`; no Docker engine, it is only a Recommends) and Alertmanager's amtool;
# and what the C SDK (sdk/c) is built and run with: the host compiler and make, the Cortex-M4
# cross compiler with newlib (rdimon semihosting), the RISC-V cross compiler with picolibc (its
# libc headers), qemu-system-arm for the Cortex-M4 image, libmosquitto-dev for the example.
# Idempotent: installs only what is missing. Runs unattended (CI has no stdin); as root, or
# through sudo when it is there. One line of output per step.
set -euo pipefail

say() { printf 'install-system-deps: %s\n' "$*"; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        say "error: not root and no sudo; run this script as root" >&2
        exit 1
    fi
fi

SERVICE_PACKAGES=(mosquitto mosquitto-clients prometheus victoria-metrics chromium chromium-driver
                  docker-compose prometheus-alertmanager openssl)
# Where Debian's packages put them; devstack's service classes look in the same places.
BINARIES=(/usr/sbin/mosquitto /usr/bin/mosquitto_pub /usr/bin/mosquitto_passwd /usr/bin/prometheus
          /usr/bin/promtool /usr/bin/victoria-metrics /usr/bin/vmagent /usr/bin/vmauth
          /usr/bin/chromium /usr/bin/chromedriver /usr/bin/docker-compose /usr/bin/amtool
          /usr/bin/openssl)
DEVICE_PACKAGES=(gcc make gcc-arm-none-eabi libnewlib-arm-none-eabi gcc-riscv64-unknown-elf
                 picolibc-riscv64-unknown-elf qemu-system-arm libmosquitto-dev)
# One file per package above (same order), the one sdk/c's Makefile and tests need.
DEVICE_FILES=(/usr/bin/gcc /usr/bin/make /usr/bin/arm-none-eabi-gcc
              /usr/lib/arm-none-eabi/newlib/rdimon.specs /usr/bin/riscv64-unknown-elf-gcc
              /usr/lib/picolibc/riscv64-unknown-elf/picolibc.specs /usr/bin/qemu-system-arm
              /usr/include/mosquitto.h)
# Debian service names (each the name of its package) and the ports they would hold; 9093 is
# also the port docker-compose.yml publishes Alertmanager on.
SERVICES=(mosquitto:1883 prometheus:9090 victoria-metrics:8428 prometheus-alertmanager:9093)

packages=()
missing=()
for bin in "${BINARIES[@]}"; do
    [[ -x $bin ]] || missing+=("$bin")
done
if ((${#missing[@]})); then
    say "missing: ${missing[*]}"
    packages+=("${SERVICE_PACKAGES[@]}")
else
    say "ok: mosquitto, prometheus, promtool, victoria-metrics, vmagent, vmauth, chromium, docker-compose," \
        "amtool already installed"
fi

device_missing=()
for i in "${!DEVICE_FILES[@]}"; do
    [[ -e ${DEVICE_FILES[$i]} ]] || device_missing+=("${DEVICE_PACKAGES[$i]}")
done
if ((${#device_missing[@]})); then
    say "missing for the C SDK: ${device_missing[*]}"
    packages+=("${device_missing[@]}")
else
    say "ok: gcc, make, arm-none-eabi-gcc + newlib, riscv64-unknown-elf-gcc + picolibc," \
        "qemu-system-arm, libmosquitto-dev already installed"
fi

if python3 -c 'import ensurepip' >/dev/null 2>&1; then
    say "ok: python3 -m venv works ($(python3 --version 2>&1))"
else
    say "missing: ensurepip for $(command -v python3 || echo python3) (python3 -m venv fails)"
    packages+=(python3-venv)
fi

if ((${#packages[@]} == 0)); then
    say "nothing to install"
    exit 0
fi

# A service whose package is installed already was set up by an operator (or stopped by an
# earlier run of this script): the loop at the end leaves it alone. Needed since the package
# list grows: a machine missing only a new tool must not have its running broker stopped.
preinstalled=" "
for entry in "${SERVICES[@]}"; do
    svc=${entry%%:*}
    if [[ $(dpkg-query -W -f='${Status}' "$svc" 2>/dev/null) == "install ok installed" ]]; then
        preinstalled+="$svc "
    fi
done

say "apt-get update"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Retries=3 update >/dev/null

say "apt-get install ${packages[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Acquire::Retries=3 -o Dpkg::Options::=--force-confold "${packages[@]}" >/dev/null

# The packages start their services where an init system runs them (systemd on a workstation
# or VM; containers usually forbid it through policy-rc.d). Tests and the demo start their
# own processes, and the system copies would hold the default ports. Only services this run
# installed are stopped and disabled: one an operator set up before is not ours to touch.
if [[ " ${packages[*]} " == *" mosquitto "* ]]; then
    for entry in "${SERVICES[@]}"; do
        svc=${entry%%:*}
        port=${entry##*:}
        if [[ $preinstalled == *" $svc "* ]]; then
            say "ok: $svc was installed before this run; left as it is"
        elif [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
            if "${SUDO[@]}" systemctl stop "$svc" >/dev/null 2>&1 \
                && "${SUDO[@]}" systemctl disable "$svc" >/dev/null 2>&1; then
                say "stopped and disabled $svc.service (frees port $port)"
            else
                say "warning: could not stop $svc.service; it may hold port $port"
            fi
        elif [[ -x /etc/init.d/$svc ]] && "${SUDO[@]}" "/etc/init.d/$svc" status >/dev/null 2>&1; then
            if "${SUDO[@]}" "/etc/init.d/$svc" stop >/dev/null 2>&1; then
                say "stopped $svc (init.d; frees port $port)"
            else
                say "warning: could not stop $svc (init.d); it may hold port $port"
            fi
        else
            say "ok: $svc is not running as a system service"
        fi
    done
fi

still_missing=()
for bin in "${BINARIES[@]}"; do
    [[ -x $bin ]] || still_missing+=("$bin")
done
for file in "${DEVICE_FILES[@]}"; do
    [[ -e $file ]] || still_missing+=("$file")
done
if ((${#still_missing[@]})); then
    say "error: still missing after install: ${still_missing[*]}" >&2
    exit 1
fi
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    say "error: python3 -m venv still fails: $(command -v python3) is not Debian's python3" >&2
    exit 1
fi
say "done"
