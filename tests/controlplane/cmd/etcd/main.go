// Command etcd is the etcd server at the version k8s.io/kubernetes requires, built from the Go
// module proxy because no release binary can be downloaded here.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
