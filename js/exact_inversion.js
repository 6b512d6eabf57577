// Front-end extension of Exact Inversion. For now it only registers itself; the anchor-word
// picker, round-trip figure and warnings arrive with the front-end issue.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "ExactInversion",
});
