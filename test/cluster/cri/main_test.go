package cri

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

// helperEnv, set in the test image's env, makes the test binary a helper
// program: the "image" the end-to-end tests run in containers.
const helperEnv = "PROCRI_TEST_HELPER"

func TestMain(m *testing.M) {
	container.Init()
	if os.Getenv(helperEnv) != "" && len(os.Args) > 1 {
		os.Exit(helper(os.Args[1], os.Args[2:]))
	}
	os.Exit(m.Run())
}

// helper runs one of the test programs and returns its exit code.
func helper(mode string, args []string) int {
	arg := func(i int, def string) string {
		if i < len(args) {
			return args[i]
		}
		return def
	}
	switch mode {
	case "serve":
		// Answer every connection with the hostname; exit 0 on SIGTERM.
		lis, err := net.Listen("tcp", ":"+arg(0, "8080"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			return 1
		}
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		go func() {
			for {
				c, err := lis.Accept()
				if err != nil {
					return
				}
				host, _ := os.Hostname()
				fmt.Fprintf(c, "hello from %s\n", host)
				_ = c.Close()
			}
		}()
		fmt.Println("serving on", lis.Addr())
		<-term
		fmt.Println("got SIGTERM, exiting")
		return 0
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
		select {}
	case "fetch":
		c, err := net.DialTimeout("tcp", arg(0, ""), 10*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, "dial:", err)
			return 1
		}
		defer c.Close()
		_, _ = io.Copy(os.Stdout, c)
		return 0
	case "exit":
		fmt.Println("to stdout")
		fmt.Fprintln(os.Stderr, "to stderr")
		code, _ := strconv.Atoi(arg(0, "0"))
		return code
	case "burn":
		// Use CPU and hold some memory, for the stats.
		mem := make([]byte, 32<<20)
		for i := range mem {
			mem[i] = byte(i)
		}
		fmt.Println("burning")
		x := 0
		for {
			for i := range 1 << 20 {
				x += i
			}
			mem[x%len(mem)]++
			time.Sleep(time.Millisecond)
		}
	case "alloc":
		// Allocate and touch MiB until killed.
		mb, _ := strconv.Atoi(arg(0, "512"))
		var held [][]byte
		for range mb {
			b := make([]byte, 1<<20)
			for i := range b {
				b[i] = 1
			}
			held = append(held, b)
		}
		fmt.Println("allocated", len(held), "MiB")
		select {}
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}
