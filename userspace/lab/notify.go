package lab

import (
	"bytes"
	"fmt"
	"net"
)

// listenNotify opens the socket the agent sends sd_notify messages to.
func listenNotify(path string) (*net.UnixConn, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	return c, nil
}

// waitReady reads sd_notify datagrams until one carries READY=1.
func waitReady(c *net.UnixConn) error {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		for _, line := range bytes.Split(buf[:n], []byte("\n")) {
			if string(line) == "READY=1" {
				return nil
			}
		}
	}
}
