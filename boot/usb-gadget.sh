#!/bin/sh
# usb-gadget.sh start|stop|status — the phone's USB tether: one CDC-ACM serial function, built with configfs.
#
# What it builds (reference/hal.md §2), under /sys/kernel/config/usb_gadget/phoneprov:
#   idVendor/idProduct 1d6b:0104 (Linux Foundation multifunction composite gadget; lab use only, anything
#   shipped needs its own VID or a pid.codes 1209:xxxx pair: set PHONEPROV_USB_VID/PID),
#   strings/0x409 serialnumber = the Pi's serial number (the phone's identity on the PC), manufacturer, product,
#   configs/c.1 (+ strings/0x409/configuration, MaxPower), functions/acm.usb0 linked into configs/c.1,
#   then the first UDC of /sys/class/udc written to UDC.
# The phone side opens /dev/ttyGS<N> (N = functions/acm.usb0/port_num); the PC sees /dev/ttyACM<X>.
#
# Idempotent: `start` on a bound gadget changes nothing, `stop` on an absent one is not an error.
# Prerequisite (once): dtoverlay=dwc2 in config.txt (Pi 4/5: dtoverlay=dwc2,dr_mode=peripheral).
# PHONEPROV_GADGET_ROOT prefixes every /sys and /proc path (tests point it at a temp dir).
set -eu

ROOT=${PHONEPROV_GADGET_ROOT:-}
NAME=phoneprov
CONFIGFS=$ROOT/sys/kernel/config/usb_gadget
GADGET=$CONFIGFS/$NAME
UDC_CLASS=$ROOT/sys/class/udc
USB_VID=${PHONEPROV_USB_VID:-0x1d6b}
USB_PID=${PHONEPROV_USB_PID:-0x0104}
MANUFACTURER=${PHONEPROV_USB_MANUFACTURER:-phoneprov}
PRODUCT=${PHONEPROV_USB_PRODUCT:-phoneprov test phone}

die() {
    echo "usb-gadget: $*" >&2
    exit 1
}

# The Pi's serial number: device tree first (a NUL-terminated string), then /proc/cpuinfo, then machine-id.
serial_number() {
    for f in "$ROOT/proc/device-tree/serial-number" "$ROOT/sys/firmware/devicetree/base/serial-number"; do
        if [ -r "$f" ]; then
            s=$(tr -d '\000\n' <"$f")
            if [ -n "$s" ]; then
                echo "$s"
                return 0
            fi
        fi
    done
    if [ -r "$ROOT/proc/cpuinfo" ]; then
        s=$(sed -n 's/^Serial[[:space:]]*:[[:space:]]*\([0-9A-Fa-f]*\)$/\1/p' "$ROOT/proc/cpuinfo" | head -n 1)
        if [ -n "$s" ]; then
            echo "$s"
            return 0
        fi
    fi
    if [ -r "$ROOT/etc/machine-id" ]; then
        cut -c1-16 "$ROOT/etc/machine-id"
        return 0
    fi
    die "no serial number: none of /proc/device-tree/serial-number, /proc/cpuinfo Serial, /etc/machine-id"
}

first_udc() {
    for u in "$UDC_CLASS"/*; do
        if [ -e "$u" ]; then
            basename "$u"
            return 0
        fi
    done
    return 1
}

# attr FILE VALUE: a configfs attribute takes its value in one write.
attr() {
    printf '%s\n' "$2" >"$1"
}

bound() {
    [ -r "$GADGET/UDC" ] && [ -n "$(cat "$GADGET/UDC")" ]
}

start() {
    if [ ! -d "$CONFIGFS" ] && [ -z "$ROOT" ]; then
        modprobe libcomposite
    fi
    [ -d "$CONFIGFS" ] || die "$CONFIGFS missing: is configfs mounted and libcomposite loaded?"
    if bound; then
        echo "usb-gadget: $NAME already bound to $(cat "$GADGET/UDC")"
        return 0
    fi
    udc=$(first_udc) || die "no USB device controller in $UDC_CLASS (dtoverlay=dwc2 in config.txt?)"
    serial=$(serial_number)

    mkdir -p "$GADGET"
    attr "$GADGET/idVendor" "$USB_VID"
    attr "$GADGET/idProduct" "$USB_PID"
    attr "$GADGET/bcdDevice" 0x0100
    attr "$GADGET/bcdUSB" 0x0200
    mkdir -p "$GADGET/strings/0x409"
    attr "$GADGET/strings/0x409/serialnumber" "$serial"
    attr "$GADGET/strings/0x409/manufacturer" "$MANUFACTURER"
    attr "$GADGET/strings/0x409/product" "$PRODUCT"
    mkdir -p "$GADGET/configs/c.1/strings/0x409"
    attr "$GADGET/configs/c.1/strings/0x409/configuration" "CDC ACM"
    attr "$GADGET/configs/c.1/MaxPower" 250
    mkdir -p "$GADGET/functions/acm.usb0"
    # Kernels >= 6.13: stop advertising AT commands so ModemManager on the PC leaves the port alone.
    if [ -e "$GADGET/functions/acm.usb0/protocol" ]; then
        attr "$GADGET/functions/acm.usb0/protocol" 0
    fi
    [ -L "$GADGET/configs/c.1/acm.usb0" ] || ln -s "$GADGET/functions/acm.usb0" "$GADGET/configs/c.1/acm.usb0"
    attr "$GADGET/UDC" "$udc"
    echo "usb-gadget: $NAME bound to $udc, serial $serial"
}

# Undo in reverse order: unbind, unlink the function, remove the directories (configfs drops attributes).
stop() {
    if [ ! -d "$GADGET" ]; then
        echo "usb-gadget: $NAME not present"
        return 0
    fi
    if bound; then
        attr "$GADGET/UDC" ""
    fi
    if [ -L "$GADGET/configs/c.1/acm.usb0" ]; then
        rm "$GADGET/configs/c.1/acm.usb0"
    fi
    for d in configs/c.1/strings/0x409 configs/c.1 functions/acm.usb0 strings/0x409 ""; do
        if [ -d "$GADGET/$d" ]; then
            rmdir "$GADGET/$d"
        fi
    done
    echo "usb-gadget: $NAME removed"
}

status() {
    if bound; then
        port=$(cat "$GADGET/functions/acm.usb0/port_num" 2>/dev/null || echo '?')
        echo "usb-gadget: $NAME bound to $(cat "$GADGET/UDC"), phone side /dev/ttyGS$port"
    elif [ -d "$GADGET" ]; then
        echo "usb-gadget: $NAME configured, not bound"
        return 3
    else
        echo "usb-gadget: $NAME not present"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
