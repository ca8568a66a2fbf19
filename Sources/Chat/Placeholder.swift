// Placeholder until the chat sources land.
enum ChatPlaceholder {}
