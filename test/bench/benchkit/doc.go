// Package benchkit holds what the benchmarks under test/bench share: long-
// running programs in netns pods (Process), CPU time and memory from /proc
// (Procs, CgroupCPU), the load generator's result (LoadResult), medians
// and spreads over rounds (Spread), and the description of the machine a
// report was made on (Host).
package benchkit
