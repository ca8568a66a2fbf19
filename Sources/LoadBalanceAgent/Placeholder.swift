// Placeholder until the LoadBalanceAgent sources land.
enum LoadBalanceAgentPlaceholder {}
