"""What a cache holds and how it is kept: its inventory (`ls`), garbage collection (`gc`) and bundles (`export`,
`import`)."""
