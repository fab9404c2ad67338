// Package offload reads and sets a network interface's VLAN offload, which
// decides whether XDP sees 802.1Q tags: with receive offload on, the driver
// (or veth) takes the tag out of the frame before XDP runs; with transmit
// offload on, a veth hands its peer the tag beside the frame.
package offload

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The legacy ethtool flag bits for VLAN offload (include/uapi/linux/ethtool.h).
const (
	ethFlagTxVLAN = 1 << 7
	ethFlagRxVLAN = 1 << 8
)

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with ifr_data, the form SIOCETHTOOL takes.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte // the rest of the union
}

// VLAN reports whether receive and transmit VLAN offload are on, in the
// calling thread's network namespace.
func VLAN(ifname string) (rx, tx bool, err error) {
	flags, err := flags(ifname)
	if err != nil {
		return false, false, err
	}
	return flags&ethFlagRxVLAN != 0, flags&ethFlagTxVLAN != 0, nil
}

// SetVLAN turns receive and transmit VLAN offload on or off (ethtool -K
// DEV rxvlan off txvlan off), in the calling thread's network namespace.
func SetVLAN(ifname string, on bool) error {
	f, err := flags(ifname)
	if err != nil {
		return err
	}
	if on {
		f |= ethFlagRxVLAN | ethFlagTxVLAN
	} else {
		f &^= ethFlagRxVLAN | ethFlagTxVLAN
	}
	if err := ethtool(ifname, unix.ETHTOOL_SFLAGS, &f); err != nil {
		return fmt.Errorf("set %s VLAN offload: %w", ifname, err)
	}
	return nil
}

func flags(ifname string) (uint32, error) {
	var f uint32
	if err := ethtool(ifname, unix.ETHTOOL_GFLAGS, &f); err != nil {
		return 0, fmt.Errorf("read %s offload flags: %w", ifname, err)
	}
	return f, nil
}

// ethtool runs one ethtool_value command; data is read and written.
func ethtool(ifname string, cmd uint32, data *uint32) error {
	var req ifreqData
	if len(ifname) == 0 || len(ifname) >= len(req.name) {
		return fmt.Errorf("interface name %q is not 1-15 bytes", ifname)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for ethtool: %w", err)
	}
	defer unix.Close(fd)
	copy(req.name[:], ifname)
	v := ethtoolValue{cmd: cmd, data: *data}
	req.data = uintptr(unsafe.Pointer(&v))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&req)))
	if errno != 0 {
		return errno
	}
	*data = v.data
	return nil
}
