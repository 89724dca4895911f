// Package bpf holds Sluice's eBPF programs (steer.c) and the Go bindings that
// bpf2go generates from them. The generated files are committed, so building
// needs no clang; `make generate` reproduces them byte for byte.
package bpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type pod_config -type orig_dst -type sock_key -type ip_key -type pod_ip -type counter -type port_range -type subnet Steer steer.c
