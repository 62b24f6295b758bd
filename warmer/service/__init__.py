"""The node service: `watch` keeps a node's cache warm by itself as plans and software change."""
