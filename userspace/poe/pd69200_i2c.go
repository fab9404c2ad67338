package poe

import (
	"context"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// i2cSlave is I2C_SLAVE from linux/i2c-dev.h: the address later reads and
// writes on the file go to (golang.org/x/sys/unix does not define it).
const i2cSlave = 0x0703

// i2cDev is /dev/i2c-N bound to one device address: each Write is one I2C
// write transaction, each Read one read transaction, as the i2c-dev driver
// does them.
type i2cDev struct{ f *os.File }

// OpenI2C opens /dev/i2c-<bus> for the device at address (7-bit).
func OpenI2C(bus int, address uint16) (PD69200Bus, error) {
	return openI2CPath(fmt.Sprintf("/dev/i2c-%d", bus), address)
}

func openI2CPath(path string, address uint16) (PD69200Bus, error) {
	if address < 0x03 || address > 0x77 {
		return nil, fmt.Errorf("i2c address %#x is not a 7-bit device address (0x03-0x77)", address)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	var ioctlErr error
	if err := rc.Control(func(fd uintptr) {
		ioctlErr = unix.IoctlSetInt(int(fd), i2cSlave, int(address))
	}); err != nil {
		f.Close()
		return nil, err
	}
	if ioctlErr != nil {
		f.Close()
		return nil, fmt.Errorf("%s: I2C_SLAVE %#x: %w", path, address, ioctlErr)
	}
	return &i2cDev{f: f}, nil
}

func (d *i2cDev) Write(p []byte) error {
	n, err := d.f.Write(p)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	return err
}

func (d *i2cDev) Read(p []byte) error {
	n, err := d.f.Read(p)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short read: %d of %d bytes", n, len(p))
	}
	return err
}

func (d *i2cDev) Close() error { return d.f.Close() }

// OpenPD69200 opens the controller at address on I2C bus bus.
func OpenPD69200(ctx context.Context, bus int, address uint16, cfg PD69200Config) (*PD69200, error) {
	dev, err := OpenI2C(bus, address)
	if err != nil {
		return nil, fmt.Errorf("pd69200: %w", err)
	}
	return NewPD69200(ctx, dev, cfg)
}
