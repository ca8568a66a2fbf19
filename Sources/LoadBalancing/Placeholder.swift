// Placeholder until the LoadBalancing sources land.
enum LoadBalancingPlaceholder {}
