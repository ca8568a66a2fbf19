// Placeholder until the NameService sources land.
enum NameServicePlaceholder {}
