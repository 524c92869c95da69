// The dashboard's Ink components: they draw the lines of src/tui/lines.ts for a state, at the
// terminal's size, and do no IO. With `color` false (NO_COLOR) no style is applied at all.
import { Box, Text } from "ink";
import type { DashboardState } from "./state.ts";
import { type Line, screenLines, type Tone } from "./lines.ts";

const toneStyle: Record<Tone, { color?: string; bold?: boolean; dimColor?: boolean }> = {
  good: { color: "green" },
  warn: { color: "yellow" },
  bad: { color: "red", bold: true },
  dim: { dimColor: true },
  title: { bold: true },
};

function LineView({ line, color }: { line: Line; color: boolean }) {
  if (line.length === 0) return <Text> </Text>;
  return (
    <Text wrap="truncate">
      {line.map((segment, index) => (
        <Text key={index} {...(color && segment.tone ? toneStyle[segment.tone] : {})}>
          {segment.text}
        </Text>
      ))}
    </Text>
  );
}

export interface ScreenProps {
  state: DashboardState;
  width: number;
  height: number;
  color: boolean;
}

/** A screen of lines at a fixed size (the dashboard's, the install wizard's). */
export function LinesView({ lines, width, height, color }: { lines: Line[]; width: number; height: number; color: boolean }) {
  return (
    <Box flexDirection="column" width={width} height={height} overflow="hidden">
      {lines.map((line, index) => (
        <LineView key={index} line={line} color={color} />
      ))}
    </Box>
  );
}

export function Screen({ state, width, height, color }: ScreenProps) {
  return <LinesView lines={screenLines(state, width, height)} width={width} height={height} color={color} />;
}
