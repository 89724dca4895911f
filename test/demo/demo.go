// Package demo holds the demo application's Kubernetes manifest, which
// `make demo` and the end-to-end tests apply to the local cluster: namespace
// demo (annotated sluice.io/inject: enabled) with the web, books, authors and
// ticker Deployments and Services and the loadgen StatefulSet, all running
// the image ghcr.io/sluice-mesh/demo (the sluice-demo binary of
// cmd/sluice-demo, whose roles live in package demoapp).
package demo

import _ "embed" // for Manifest

// Namespace is the namespace of every namespaced object of Manifest.
const Namespace = "demo"

// Image is the image of every container of Manifest, without its tag: the
// local cluster's runtime maps it, with any tag, to the sluice-demo binary.
const Image = "ghcr.io/sluice-mesh/demo"

// Manifest is demo.yaml: the demo application's objects as multi-document
// YAML, ready for `kubectl apply -f -`. Its images have the tag "dev".
//
//go:embed demo.yaml
var Manifest []byte
