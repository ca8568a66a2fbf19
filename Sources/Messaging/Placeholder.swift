public enum MessagingPlaceholder {}
