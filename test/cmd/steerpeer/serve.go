package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
)

// serveEvent is the line printed for each connection the server accepts.
type serveEvent struct {
	Local  string `json:"local"`
	Remote string `json:"remote"`
}

func runServe(args []string, out *output, stderr io.Writer) int {
	fs := flag.NewFlagSet("steerpeer serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("listen", "", "address to listen on, such as 10.248.1.10:8080 or [::]:8080 (required)")
	mode := fs.String("mode", "echo", "echo (write back until EOF) or sha256 (answer the hex SHA-256 of all read)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *addr == "" || (*mode != "echo" && *mode != "sha256") {
		fmt.Fprintln(stderr, "steerpeer serve: need --listen ADDR and --mode echo|sha256")
		return 2
	}
	l, err := listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(stderr, "steerpeer serve: listen %s: %v\n", *addr, err)
		return 1
	}
	out.line("READY")
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			fmt.Fprintf(stderr, "steerpeer serve: accept: %v\n", err)
			return 1
		}
		out.json(serveEvent{Local: addrPort(c.LocalAddr()).String(), Remote: addrPort(c.RemoteAddr()).String()})
		if *mode == "echo" {
			go echo(c)
		} else {
			go hashConn(c)
		}
	}
}

// hashConn reads c to EOF, then writes the hex SHA-256 of what it read and a
// newline, and closes c.
func hashConn(c *net.TCPConn) error {
	defer c.Close()
	h := sha256.New()
	src := plainConn{c}
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	_, err := plainConn{c}.Write([]byte(hex.EncodeToString(h.Sum(nil)) + "\n"))
	return err
}
