package vnet

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

// SetVLANOffload turns receive and transmit VLAN offload of a link in the
// namespace on or off (ethtool -K DEV rxvlan off txvlan off). With it on, a
// veth carries tags beside the frame instead of in it, so XDP never sees
// them and a peer's XDP program misses the tag it must act on.
func (n *NS) SetVLANOffload(link string, on bool) error {
	return n.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket for ethtool: %w", err)
		}
		defer unix.Close(fd)
		var req ifreqData
		if len(link) >= len(req.name) {
			return fmt.Errorf("interface name %q is too long", link)
		}
		copy(req.name[:], link)
		v := ethtoolValue{cmd: unix.ETHTOOL_GFLAGS}
		req.data = uintptr(unsafe.Pointer(&v))
		if err := ethtoolIoctl(fd, &req); err != nil {
			return fmt.Errorf("netns %s: read %s offload flags: %w", n.Name, link, err)
		}
		if on {
			v.data |= ethFlagRxVLAN | ethFlagTxVLAN
		} else {
			v.data &^= ethFlagRxVLAN | ethFlagTxVLAN
		}
		v.cmd = unix.ETHTOOL_SFLAGS
		if err := ethtoolIoctl(fd, &req); err != nil {
			return fmt.Errorf("netns %s: set %s VLAN offload: %w", n.Name, link, err)
		}
		return nil
	})
}

func ethtoolIoctl(fd int, req *ifreqData) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(req)))
	if errno != 0 {
		return errno
	}
	return nil
}
